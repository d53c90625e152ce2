"""Tests of the arena (prefgame.arena): the gold preference P*, texts ↔ feature classes, annotators,
exact measurements, the exported data sets read back through the data layer, and the tokenizer and
tiny-Llama save/load round trips.

Notation: K = 72 classes, T = 12 prompt types, P[t, i, j] = P*(class i ≻ class j | type t),
s(i) ∈ [0, 1]^5 the objective scores of class i, w_t the prompt weights, C the style cycle.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefgame.arena import export
from prefgame.arena.lm import build_tokenizer, save_tokenizer, tiny_llama_config
from prefgame.arena.world import (
    N_CLASSES,
    N_PROMPT_TYPES,
    STYLE_CYCLE,
    STYLE_WORDS,
    STYLES,
    TOPICS,
    Arena,
    ArenaSpec,
    Features,
    class_features,
    class_index,
    compose_response,
    parse_prompt,
    prompt_weights,
    response_features,
    sigmoid,
)
from prefgame.data import load_preferences


@pytest.fixture(scope="module")
def arena() -> Arena:
    return Arena()


def spec_named(arena: Arena, name: str):
    return next(s for s in arena.spec.annotators if s.name == name)


def random_policy(rng: np.random.Generator) -> torch.Tensor:
    """(T, K) a random class-level policy, different per prompt type."""
    return torch.from_numpy(rng.dirichlet(np.full(N_CLASSES, 0.3), size=N_PROMPT_TYPES))


# -- the gold preference ---------------------------------------------------------------------------


@pytest.mark.parametrize(("strength", "cycle"), [(6.0, 2.5), (1.0, 0.0), (20.0, 10.0), (0.3, -4.0), (0.0, 1.0)])
def test_gold_matrix_is_exactly_antisymmetric(strength: float, cycle: float) -> None:
    p = Arena(ArenaSpec(strength=strength, cycle=cycle)).gold_matrix  # (T, K, K)
    assert p.shape == (N_PROMPT_TYPES, N_CLASSES, N_CLASSES) and p.dtype == torch.float64
    assert torch.equal(p + p.transpose(1, 2), torch.ones_like(p))  # exactly, not approximately
    assert torch.equal(torch.diagonal(p, dim1=1, dim2=2), torch.full((N_PROMPT_TYPES, N_CLASSES), 0.5))
    assert bool(((p > 0) & (p < 1)).all())


def test_gold_matrix_matches_the_formula_entry_by_entry() -> None:
    # P*(i ≻ j | t) = σ(strength · w_t·(s(i) − s(j)) + c · C[style(i), style(j)]), written out here.
    arena = Arena(ArenaSpec(strength=6.0, cycle=2.5))
    rng = np.random.default_rng(0)
    types = [(topic, modifier) for topic in TOPICS for modifier in ("briefly", "plainly", "in detail")]
    for _ in range(300):
        t, i, j = int(rng.integers(N_PROMPT_TYPES)), int(rng.integers(N_CLASSES)), int(rng.integers(N_CLASSES))
        fi, fj = class_features(i), class_features(j)
        w = prompt_weights(*types[t])
        logit = 6.0 * float(w @ (fi.objectives() - fj.objectives())) + 2.5 * STYLE_CYCLE[fi.style, fj.style]
        assert float(arena.gold_matrix[t, i, j]) == pytest.approx(sigmoid(logit), abs=1e-15)


def test_prompt_weights_are_on_the_simplex(arena: Arena) -> None:
    w = arena.type_weights
    assert w.shape == (N_PROMPT_TYPES, 5)
    assert np.all(w >= 0) and np.allclose(w.sum(1), 1.0, rtol=0, atol=1e-15)


def test_zero_cycle_gives_a_bradley_terry_world() -> None:
    # With c = 0, P*(i ≻ j | t) = σ(r_t(i) − r_t(j)) for the reward r_t(i) = strength · w_t · s(i).
    arena = Arena(ArenaSpec(strength=6.0, cycle=0.0))
    reward = 6.0 * arena.type_weights @ arena.class_objectives.T  # (T, K)
    expected = torch.sigmoid(torch.from_numpy(reward[:, :, None] - reward[:, None, :]))
    torch.testing.assert_close(arena.gold_matrix, expected, rtol=0, atol=1e-15)
    # Transitive: the logit of any 3-cycle sums to zero.
    logit = torch.logit(arena.gold_matrix)
    i, j, k = torch.randint(N_CLASSES, (3, 500), generator=torch.Generator().manual_seed(0))
    cycle_sum = logit[:, i, j] + logit[:, j, k] + logit[:, k, i]
    assert float(cycle_sum.abs().max()) < 1e-9


@pytest.mark.parametrize("cycle", [0.5, 2.5])
def test_style_alone_forms_a_cycle_when_c_is_positive(cycle: float) -> None:
    # Three classes equal on every objective, differing only in style: formal ≻ casual ≻ poetic ≻ formal,
    # each with probability σ(c), so no reward vector can explain them (the logits sum to 3c, not 0).
    arena = Arena(ArenaSpec(cycle=cycle))
    for rest in itertools.product((0, 1), (0, 1), range(3), (0, 1)):
        formal, casual, poetic = (class_index(style, *rest) for style in range(3))
        for t in range(N_PROMPT_TYPES):
            for winner, loser in ((formal, casual), (casual, poetic), (poetic, formal)):
                assert float(arena.gold_matrix[t, winner, loser]) == pytest.approx(sigmoid(cycle), abs=1e-15)


# -- texts ↔ classes -------------------------------------------------------------------------------


def test_class_index_round_trips() -> None:
    assert N_CLASSES == 72
    assert [class_features(i).index for i in range(N_CLASSES)] == list(range(N_CLASSES))


def test_compose_response_round_trips_every_class_on_many_prompts(arena: Arena) -> None:
    rng = np.random.default_rng(0)
    prompts = arena.prompts[::47]  # 58 prompts covering every prompt type and every answer
    assert len({p.type_index for p in prompts}) == N_PROMPT_TYPES and len({p.answer for p in prompts}) == 9
    for prompt in prompts:
        for index in range(N_CLASSES):
            f = class_features(index)
            response = compose_response(prompt, f, rng)
            assert response_features(prompt, response) == f, (prompt.text, response, f)
            assert arena.features(prompt.text, response) == f  # through the prompt text


JUNK = [
    "",
    "   ",
    "\n\t",
    "the answer is ² .",  # "²".isdigit() is True but int("²") fails
    "9" * 5000,  # int() refuses strings of more than 4,300 digits
    "٣ is a number in Arabic-Indic digits",
    "certainly yeah behold",  # a three-way style tie: the first style word seen wins
    "<unk> <eos> <pad>",
    "steal",
    "0007 music",
    "🎵" * 50,
]


@pytest.mark.parametrize("text", JUNK)
def test_response_features_is_total_on_junk(arena: Arena, text: str) -> None:
    for prompt in arena.prompts[::300]:
        f = response_features(prompt, text)
        assert 0 <= f.index < N_CLASSES


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_response_features_is_total_on_arbitrary_text(text: str) -> None:
    prompt = parse_prompt("hey explain garden in detail and what is 4 plus 3 ?")
    assert 0 <= response_features(prompt, text).index < N_CLASSES


def test_response_features_reads_each_feature(arena: Arena) -> None:
    prompt = next(p for p in arena.prompts if p.topic == "music" and p.a == 3 and p.b == 4)
    f = response_features(prompt, "yeah , music fills quiet rooms . the answer is 7 . cool .")
    assert f == Features(style=STYLES.index("casual"), relevant=1, correct=1, length=0, unsafe=0)
    assert response_features(prompt, "behold the answer is 07 gently").correct == 1  # leading zeros
    assert response_features(prompt, "certainly 8 then 7").correct == 0  # only the first number counts
    tie = response_features(prompt, "softly yeah certainly behold yeah")
    assert STYLES[tie.style] == "poetic"  # 2 poetic = 2 casual > 1 formal; poetic was seen first
    long_text = " ".join([STYLE_WORDS["formal"][0]] * 29)
    assert response_features(prompt, long_text).length == 2


# -- annotators ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs(arena: Arena) -> tuple[list[str], list[str], list[str]]:
    return export.response_pairs(arena, 3000, np.random.default_rng(1))


def test_annotator_logits_of_swapped_pairs(arena: Arena, pairs) -> None:
    # Every term but the position bias is antisymmetric in (a, b): logit(a, b) + logit(b, a) = 2 · bias.
    prompts, a, b = pairs
    for spec in arena.spec.annotators:
        both = arena.annotator_logits(spec, prompts, a, b) + arena.annotator_logits(spec, prompts, b, a)
        np.testing.assert_allclose(both, 2 * spec.position_bias, rtol=0, atol=1e-12)
    # Without biases, at temperature 1 and the world's cycle, the careful annotator is the gold P*.
    careful = spec_named(arena, "careful")
    logits = arena.annotator_logits(careful, prompts, a, b)
    gold = arena.gold_probability(prompts, a, b).numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), gold, rtol=0, atol=1e-12)


def test_position_biased_annotator_prefers_the_first_position(arena: Arena, pairs) -> None:
    prompts, a, b = pairs
    rng = np.random.default_rng(2)

    def first_wins(name: str) -> float:
        spec = spec_named(arena, name)
        labels = np.concatenate([arena.annotate(spec, prompts, a, b, rng), arena.annotate(spec, prompts, b, a, rng)])
        return float(labels.mean())  # each pair shown in both orders: ½ for an unbiased annotator

    assert abs(first_wins("careful") - 0.5) < 0.03  # 6 standard errors (sd ≤ 0.5/√6000 ≈ 0.0065)
    assert first_wins("first-position") > 0.65


def test_length_biased_annotator_prefers_the_longer_response(arena: Arena, pairs) -> None:
    prompts, a, b = pairs
    rng = np.random.default_rng(3)
    words_a, words_b = (np.array([len(r.split()) for r in rs]) for rs in (a, b))
    differ = words_a != words_b

    def longer_wins(name: str) -> float:
        labels = arena.annotate(spec_named(arena, name), prompts, a, b, rng)
        return float(np.where(words_a > words_b, labels, 1 - labels)[differ].mean())

    assert longer_wins("verbose-lover") > longer_wins("careful") + 0.15


def test_ties_only_inside_the_tie_band(arena: Arena, pairs) -> None:
    prompts, a, b = pairs
    noisy = spec_named(arena, "noisy")
    labels = arena.annotate(noisy, prompts, a, b, np.random.default_rng(4))
    p = 1 / (1 + np.exp(-arena.annotator_logits(noisy, prompts, a, b)))
    assert set(np.unique(labels)) <= {0.0, 0.5, 1.0}
    np.testing.assert_array_equal(labels == 0.5, np.abs(p - 0.5) < noisy.tie_band)
    assert 0 < (labels == 0.5).sum() < len(labels)


# -- exact measurements ----------------------------------------------------------------------------


def test_win_rate_is_a_half_against_itself_and_complementary(arena: Arena) -> None:
    rng = np.random.default_rng(5)
    for _ in range(5):
        pi, mu = random_policy(rng), random_policy(rng)
        assert arena.win_rate(pi, pi) == pytest.approx(0.5, abs=1e-12)
        assert arena.win_rate(pi, mu) + arena.win_rate(mu, pi) == pytest.approx(1.0, abs=1e-12)
    uniform = torch.full((N_PROMPT_TYPES, N_CLASSES), 1 / N_CLASSES, dtype=torch.float64)
    assert arena.win_rate(uniform, uniform) == pytest.approx(0.5, abs=1e-12)


def test_win_rate_of_point_masses_is_the_gold_probability(arena: Arena) -> None:
    i, j = 17, 40
    pi, mu = torch.zeros(N_PROMPT_TYPES, N_CLASSES), torch.zeros(N_PROMPT_TYPES, N_CLASSES)
    pi[:, i], mu[:, j] = 1.0, 1.0
    expected = float(arena.gold_matrix[:, i, j] @ arena.type_probs)
    assert arena.win_rate(pi, mu) == pytest.approx(expected, abs=1e-12)
    assert float(arena.type_probs.sum()) == pytest.approx(1.0, abs=1e-12)


def test_exploitability_is_nonnegative_and_zero_at_a_condorcet_winner() -> None:
    # π P π = ½ for every π, so the best response wins at least ½: exploitability ≥ 0. In a BT world
    # (c = 0) the highest-reward class per type is a Condorcet winner; playing it gives exactly 0.
    rng = np.random.default_rng(6)
    for cycle in (0.0, 2.5):
        arena = Arena(ArenaSpec(cycle=cycle))
        for _ in range(5):
            assert arena.exploitability(random_policy(rng)) >= -1e-12
    bt = Arena(ArenaSpec(cycle=0.0))
    reward = bt.type_weights @ bt.class_objectives.T  # (T, K)
    best = torch.zeros(N_PROMPT_TYPES, N_CLASSES, dtype=torch.float64)
    best[torch.arange(N_PROMPT_TYPES), torch.from_numpy(reward.argmax(1))] = 1.0
    assert bt.exploitability(best) == pytest.approx(0.0, abs=1e-12)
    # With the style cycle no pure class is unexploitable: a different style beats it with σ(c) > ½.
    cyclic = Arena(ArenaSpec(cycle=2.5))
    assert cyclic.exploitability(best) > 0.1


def test_class_distribution_normalizes_and_falls_back_to_pooled(arena: Arena) -> None:
    rows = export.sft_corpus(arena, 200, np.random.default_rng(7))
    music = [r for r in rows if " music " in r["prompt"]]
    others = [r for r in rows if " music " not in r["prompt"]]
    dist = arena.class_distribution([r["prompt"] for r in others], [r["response"] for r in others])
    assert dist.shape == (N_PROMPT_TYPES, N_CLASSES)
    torch.testing.assert_close(dist.sum(1), torch.ones(N_PROMPT_TYPES, dtype=torch.float64), rtol=0, atol=1e-12)
    assert bool((dist >= 0).all())
    music_types = sorted({arena.classify([r["prompt"]], [r["response"]])[0][0] for r in music})
    types, classes = arena.classify([r["prompt"] for r in others], [r["response"] for r in others])
    pooled = torch.bincount(torch.from_numpy(classes), minlength=N_CLASSES).double() / len(classes)
    for t in music_types:  # no samples for these types: the pooled distribution
        torch.testing.assert_close(dist[t], pooled, rtol=0, atol=1e-12)
    smooth = arena.class_distribution([r["prompt"] for r in rows], [r["response"] for r in rows], smoothing=0.1)
    assert bool((smooth > 0).all())
    torch.testing.assert_close(smooth.sum(1), torch.ones(N_PROMPT_TYPES, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("system", ["demonstrator", "poet"])
def test_demonstrator_distribution_matches_the_sampled_corpus(arena: Arena, system: str) -> None:
    probs = export.SYSTEMS[system]
    exact = arena.demonstrator_distribution(probs)
    torch.testing.assert_close(exact.sum(1), torch.ones(N_PROMPT_TYPES, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(exact, exact[:1].expand_as(exact))  # the demonstrator ignores the prompt
    n, rng = 6000, np.random.default_rng(8)
    if system == "demonstrator":  # the exported SFT corpus
        rows = export.sft_corpus(arena, n, rng)
        prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    else:
        sampled = arena.sample_prompts(n, rng)
        prompts = [p.text for p in sampled]
        responses = [compose_response(p, arena.sample_features(rng, probs), rng) for p in sampled]
    _, classes = arena.classify(prompts, responses)
    empirical = np.bincount(classes, minlength=N_CLASSES) / n
    p = exact[0].numpy()
    # Every class within 5 binomial standard errors (72 classes: a false alarm is very unlikely).
    assert np.all(np.abs(empirical - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12)


def test_in_cycle_marks_only_equal_objectives_with_different_styles(arena: Arena) -> None:
    rng = np.random.default_rng(9)
    prompt = arena.prompts[123]
    i, j = np.meshgrid(np.arange(N_CLASSES), np.arange(N_CLASSES), indexing="ij")
    i, j = i.ravel(), j.ravel()
    responses = [compose_response(prompt, class_features(k), rng) for k in range(N_CLASSES)]
    marked = arena.in_cycle([prompt.text] * len(i), [responses[k] for k in i], [responses[k] for k in j])
    fa, fb = [class_features(k) for k in i], [class_features(k) for k in j]
    expected = [
        x.style != y.style and dataclasses.replace(x, style=0) == dataclasses.replace(y, style=0)
        for x, y in zip(fa, fb)
    ]
    np.testing.assert_array_equal(marked, expected)
    assert marked.sum() == 72 * 2  # each class has two partners: the same features in the other styles


def test_no_pairs_is_an_empty_answer_not_an_error(arena: Arena) -> None:
    """Zero pairs (``prefgame arena pairs=0``): empty class arrays of an integer type, so every measurement
    built on them indexes with them (an empty list used to become a float array)."""
    types, classes = arena.classify([], [])
    assert types.dtype == classes.dtype == np.int64 and len(types) == len(classes) == 0
    assert arena.in_cycle([], [], []).shape == (0,)
    assert arena.gold_probability([], [], []).shape == (0,)
    assert export.labeled_pairs(arena, 0, np.random.default_rng(0), minimal_pair_fraction=0.3) == []


# -- exported data sets ----------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_is_deterministic_in_the_seed(arena_dir: Path, arena_rows: dict, tmp_path: Path) -> None:
    from prefgame.arena.job import ArenaJobConfig, run
    from prefgame.config import load_config

    # Rerun from the written config.yaml into another folder: the same bytes.
    cfg = load_config(ArenaJobConfig, arena_dir / "config.yaml", [f"output_dir={tmp_path}"])
    assert run(cfg) == arena_rows
    for name in arena_rows:
        assert (tmp_path / name).read_bytes() == (arena_dir / name).read_bytes(), name
    assert json.loads((arena_dir / "metrics.json").read_text()) == {"rows": arena_rows}
    for name in ("log.txt", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"):
        assert (arena_dir / name).is_file()


def test_exported_pairs_load_as_pairs(arena: Arena, arena_dir: Path, arena_rows: dict) -> None:
    rows = read_jsonl(arena_dir / "pairs.jsonl")
    data = load_preferences(str(arena_dir / "pairs.jsonl"))
    assert (data.kind, data.format, len(data.dataset)) == ("pairs", "pairs", arena_rows["pairs.jsonl"])
    assert data.problems == []
    ds = data.dataset
    for column in ("prompt", "chosen", "rejected", "label", "subset"):
        assert ds[column] == [r[column] for r in rows], column
    assert ds[0]["prompt_messages"] == [{"role": "user", "content": rows[0]["prompt"]}]
    assert set(ds["source"]) == {""}
    # The label is the gold probability that chosen beats rejected, and chosen is the one P* prefers.
    gold = arena.gold_probability(ds["prompt"], ds["chosen"], ds["rejected"]).numpy()
    np.testing.assert_allclose(ds["label"], gold, rtol=0, atol=1e-12)
    assert min(ds["label"]) >= 0.5
    cyc = [r for r in rows if r["in_cycle"]]
    assert cyc, "the minimal pairs include style-only pairs"
    for r in cyc:  # decided by the cyclic term alone: label σ(c)
        assert r["label"] == pytest.approx(sigmoid(arena.spec.cycle), abs=1e-12)


def test_exported_ratings_load_as_ratings(arena_dir: Path, arena_rows: dict) -> None:
    rows = read_jsonl(arena_dir / "ratings.jsonl")
    data = load_preferences(str(arena_dir / "ratings.jsonl"))
    assert (data.kind, data.format, len(data.dataset)) == ("ratings", "ratings", arena_rows["ratings.jsonl"])
    ds = data.dataset
    objectives = ["relevance", "correctness", "conciseness", "detail", "safety"]
    assert [c for c in ds.column_names if c in objectives] == objectives
    assert ds["response"] == [r["response"] for r in rows]
    for name in objectives:
        for loaded, written in zip(ds[name], [r[name] for r in rows]):
            assert math.isnan(loaded) if written is None else loaded == written
    values = [r[n] for r in rows for n in objectives if r[n] is not None]
    assert set(values) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    assert any(r[n] is None for r in rows for n in objectives)


def test_exported_battles_load_as_battles(arena_dir: Path, arena_rows: dict) -> None:
    rows = read_jsonl(arena_dir / "battles.jsonl")
    data = load_preferences(str(arena_dir / "battles.jsonl"))
    assert (data.kind, data.format, len(data.dataset)) == ("battles", "battles", arena_rows["battles.jsonl"])
    ds = data.dataset
    for column in ("prompt", "model_a", "model_b", "winner", "judge", "response_a", "response_b"):
        assert ds[column] == [r[column] for r in rows], column
    assert set(ds["winner"]) <= {"model_a", "model_b", "tie"}
    assert set(ds["model_a"]) | set(ds["model_b"]) <= set(export.SYSTEMS)
    assert all(a != b for a, b in zip(ds["model_a"], ds["model_b"]))


def test_exported_sft_corpus_has_prompt_and_response(arena: Arena, arena_dir: Path, arena_rows: dict) -> None:
    rows = read_jsonl(arena_dir / "sft.jsonl")
    assert len(rows) == arena_rows["sft.jsonl"]
    assert all(set(r) == {"prompt", "response"} and r["prompt"] and r["response"] for r in rows)
    arena.classify([r["prompt"] for r in rows], [r["response"] for r in rows])  # every prompt parses


# -- tokenizer and model files ---------------------------------------------------------------------


def arena_texts(arena_dir: Path) -> list[str]:
    texts = [t for r in read_jsonl(arena_dir / "sft.jsonl") for t in (r["prompt"], r["response"])]
    texts += [t for r in read_jsonl(arena_dir / "pairs.jsonl") for t in (r["chosen"], r["rejected"])]
    return texts


def test_tokenizer_save_load_round_trip(arena_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    built = save_tokenizer(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert loaded.get_vocab() == built.get_vocab()
    assert loaded.chat_template == built.chat_template
    assert loaded.padding_side == built.padding_side == "left"
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(loaded, name) == getattr(built, name) is not None
    texts = arena_texts(arena_dir)
    ids_built = built(texts, add_special_tokens=False)["input_ids"]
    ids_loaded = loaded(texts, add_special_tokens=False)["input_ids"]
    assert ids_built == ids_loaded
    assert all(loaded.unk_token_id not in ids for ids in ids_loaded)  # the vocabulary covers the arena
    assert loaded.batch_decode(ids_loaded) == texts  # decode(encode(text)) == text
    messages = [{"role": "user", "content": texts[0]}, {"role": "assistant", "content": texts[1]}]
    for tok in (built, loaded):
        assert tok.apply_chat_template(messages, tokenize=False) == f"<user> {texts[0]} <assistant> {texts[1]} <eos> "
    assert loaded.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True) == (
        f"<user> {texts[0]} <assistant>"
    )


def test_tiny_llama_save_load_gives_identical_logits(arena_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(0)
    config = tiny_llama_config(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(str(tmp_path / "model"), safe_serialization=True)
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model")).eval()
    assert type(loaded) is LlamaForCausalLM
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight  # still tied
    ids = torch.tensor(tok(arena_texts(arena_dir)[:4], add_special_tokens=False)["input_ids"][:1])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert "model.safetensors" in files
    assert not {f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))}


def test_rankings_export_scores_each_response_by_its_gold_leave_one_out_win_rate():
    arena = Arena()
    rows = export.rankings(arena, 3, np.random.default_rng(1), k=4)
    for row in rows:
        ys = row["responses"]
        assert len(ys) == 4 and len(row["scores"]) == 4
        for i, y in enumerate(ys):
            others = [z for j, z in enumerate(ys) if j != i]
            expected = float(arena.gold_probability([row["prompt"]] * 3, [y] * 3, others).mean())
            assert row["scores"][i] == pytest.approx(expected, abs=1e-9)
        assert sum(row["scores"]) == pytest.approx(4 / 2)  # Σ_i Σ_{j≠i} P(i ≻ j) = K(K−1)/2
