"""Real oracles: a sequence-classification reward model (a random one-output
``LlamaForSequenceClassification`` saved with ``save_pretrained``, the form of most public reward
models) as the PPO reward, the self-play and online-DPO oracle (``oracle.kind=model``) and the
``prefgame score`` model; and the backbone passes a K×K request costs a preference model, counted
on the backbone's forward.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM, LlamaForSequenceClassification

from prefgame.arena import export
from prefgame.arena.lm import build_tokenizer, tiny_llama_config
from prefgame.arena.world import Arena, all_prompts
from prefgame.config import load_config
from prefgame.errors import PrefgameError
from prefgame.game.lm_selfplay import PreferenceCache, cross_matrices, group_matrices
from prefgame.models import (
    BackboneConfig,
    PMModelConfig,
    PreferenceModel,
    SequenceClassifierReward,
    build_encoder,
    build_head,
    load_model,
    save_preference_model,
)
from prefgame.oracle import OracleConfig, PreferenceOracle, build_oracle
from prefgame.run import write_jsonl

RESPONSES = [
    "the answer is 3 .",
    "yeah",
    "music is nice and the answer is 4 .",
    "the answer is 3 . music is nice",
    "sorry",
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def tiny_config(tok, **extra):
    cfg = tiny_llama_config(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    for key, value in extra.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tok) -> Path:
    """A random one-output LlamaForSequenceClassification (pad id set) and the arena tokenizer."""
    path = tmp_path_factory.mktemp("seqcls-rm")
    torch.manual_seed(0)
    LlamaForSequenceClassification(tiny_config(tok, num_labels=1)).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def rm(rm_dir) -> SequenceClassifierReward:
    return load_model(rm_dir, batch_size=3)


@pytest.fixture(scope="module")
def pi0_dir(tmp_path_factory, tok) -> Path:
    path = tmp_path_factory.mktemp("pi0")
    torch.manual_seed(1)
    LlamaForCausalLM(tiny_config(tok)).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def prompts(n: int = 4) -> list[str]:
    return [p.text for p in all_prompts()[:: 2700 // n][:n]]


class RowCounter:
    """Counts the sequences (rows) and calls that go through a module's forward."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.rows = self.calls = 0
        self.handle = module.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.rows += int(ids.shape[0])
        self.calls += 1

    def __enter__(self) -> RowCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


# ---------------------------------------------------------------------------------------------- the model


def test_sequence_classifier_batched_equals_alone_with_the_chat_template(rm, rm_dir, tok):
    """Length-sorted, right-padded batches of 3 give each (prompt, response) the score the model gives
    it alone; the text is the chat template's rendering of the conversation; each distinct pair is
    scored once however often a call names it."""
    xs = [x for x in prompts(3) for _ in RESPONSES]
    ys = RESPONSES * 3
    model = LlamaForSequenceClassification.from_pretrained(str(rm_dir)).eval()
    alone = []
    for x, y in zip(xs, ys):
        text = tok.apply_chat_template(
            [{"role": "user", "content": x}, {"role": "assistant", "content": y}], tokenize=False
        )
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert rm.sequences([x], [y])[0] == ids
        with torch.no_grad():
            alone.append(float(model(input_ids=torch.tensor([ids])).logits[0, 0]))
    with RowCounter(rm.model) as count:
        rewards = rm.reward([*xs, *xs], [*ys, *ys])  # every pair twice
    assert rewards.dtype == torch.float32 and rewards.shape == (2 * len(xs),)
    torch.testing.assert_close(rewards[: len(xs)], torch.tensor(alone), rtol=0, atol=1e-5)
    assert torch.equal(rewards[: len(xs)], rewards[len(xs) :])
    assert count.rows == len(xs) and count.calls == math.ceil(len(xs) / 3)
    assert rewards.std() > 0


def test_sequence_classifier_is_an_antisymmetric_oracle(rm):
    """P(a ≻ b) = σ(r_a − r_b): P(a≻b) + P(b≻a) = 1, P(a≻a) = ½, and the K×K matrix from K rewards
    equals the pairs asked one by one."""
    xs = prompts(len(RESPONSES))
    a, b = RESPONSES, RESPONSES[1:] + RESPONSES[:1]
    assert isinstance(rm, PreferenceOracle) and rm.has_reward
    p_ab, p_ba = rm.preference(xs, a, b), rm.preference(xs, b, a)
    assert p_ab.dtype == torch.float64 and p_ab.shape == (len(xs),)
    torch.testing.assert_close(p_ab + p_ba, torch.ones_like(p_ab), rtol=0, atol=1e-15)
    assert torch.equal(rm.preference(xs, a, a), torch.full((len(xs),), 0.5, dtype=torch.float64))
    r_a, r_b = rm.reward(xs, a).double(), rm.reward(xs, b).double()
    # separate calls batch a sequence with others: float32 rounding of the padded batch apart
    torch.testing.assert_close(p_ab, torch.sigmoid(r_a - r_b), rtol=0, atol=1e-6)
    k = len(RESPONSES)
    with RowCounter(rm.model) as count:
        m = rm.preference_matrix(xs[0], RESPONSES)
    assert count.rows == k
    i, j = torch.triu_indices(k, k, 1)
    direct = rm.preference([xs[0]] * len(i), [RESPONSES[t] for t in i], [RESPONSES[t] for t in j])
    torch.testing.assert_close(m[i, j], direct, rtol=0, atol=1e-12)
    assert torch.equal(torch.diagonal(m), torch.full((k,), 0.5, dtype=torch.float64))


def test_sequence_classifier_reads_a_message_list_prompt_whole(rm, tok):
    """A conversation prompt: the template renders every turn, then the response as the assistant's."""
    history = [
        {"role": "user", "content": "tell me about music"},
        {"role": "assistant", "content": "music is nice"},
        {"role": "user", "content": "what is 1 plus 2 ?"},
    ]
    text = tok.apply_chat_template([*history, {"role": "assistant", "content": "the answer is 3 ."}], tokenize=False)
    assert rm.sequences([history], ["the answer is 3 ."])[0] == tok(text, add_special_tokens=False)["input_ids"]
    r = rm.reward([history, history[-1]["content"]], ["the answer is 3 .", "the answer is 3 ."])
    assert r[0] != r[1]  # the earlier turns count


def test_sequence_classifier_truncation_keeps_the_end(rm_dir, tok):
    short = load_model(rm_dir, max_length=8)
    full, cut = (
        load_model(rm_dir).sequences(prompts(1), RESPONSES[2:3])[0],
        short.sequences(prompts(1), RESPONSES[2:3])[0],
    )
    assert len(full) > 8 and cut == full[-8:]


def test_sequence_classifier_errors_are_one_line(tmp_path, tok, pi0_dir):
    """Several labels, a causal LM, a missing path, an option of no use: one line each."""
    three = tmp_path / "three-labels"
    LlamaForSequenceClassification(tiny_config(tok, num_labels=3)).save_pretrained(str(three))
    tok.save_pretrained(str(three))
    cases = [
        (three, {}, r"3 labels; a reward model has one output \(num_labels=1\)"),
        (pi0_dir, {}, "neither a prefgame preference model .*architectures: LlamaForCausalLM"),
        (tmp_path / "nowhere", {}, "model path not found"),
        (three, {"temperature": 2}, "unknown model option temperature"),
    ]
    for path, options, message in cases:
        with pytest.raises(PrefgameError, match=message) as info:
            load_model(path, **options)
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- the jobs


PPO_TINY = [
    "train.iterations=2",
    "train.rollout_batch_size=8",
    "train.mini_batch_size=4",
    "train.micro_batch_size=4",
    "train.warmup_steps=0",
    "train.lr=1e-3",
    "ppo.epochs=1",
    "eval.prompts=12",
    "eval.samples_per_prompt=1",
    "eval.reference_samples_per_prompt=1",
    "eval.every=0",
    "sampling.max_new_tokens=10",
    "train.save_every=0",
    "reward.normalize_samples=16",
]


def test_ppo_with_a_sequence_classifier_reward(pi0_dir, rm_dir, tmp_path, monkeypatch):
    """reward.path = the sequence classifier: PPO loads it frozen, scores its rollouts with it and the
    policy trains."""
    from prefgame.train import ppo as ppo_module

    loaded = []
    real = ppo_module._load_reward_model

    def load(cfg, device, precision):
        loaded.append(real(cfg, device, precision))
        return loaded[-1]

    monkeypatch.setattr(ppo_module, "_load_reward_model", load)
    metrics = ppo_module.train_ppo_arena(pi0_dir, rm_dir, tmp_path / "run", overrides=PPO_TINY)
    rm = loaded[0]
    assert isinstance(rm, SequenceClassifierReward) and rm.batch_size == 256  # reward.batch_size
    saved = load_model(rm_dir).state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in rm.state_dict().items())
    assert not any(p.requires_grad for p in rm.parameters())
    before = LlamaForCausalLM.from_pretrained(str(pi0_dir)).state_dict()
    after = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert all(not torch.equal(after[k], before[k]) for k in after)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "clipfrac" in r]
    assert len(train_rows) == 2 and all(math.isfinite(r["score"]) and r["score"] != 0 for r in train_rows)
    assert metrics["nonfinite_steps"] == 0 and metrics["reward_model"] == str(rm_dir)


def test_ppo_refuses_a_model_without_a_scalar_reward(tmp_path):
    from prefgame.train.ppo import PPORewardConfig, _load_reward_model
    from prefgame.train.precision import Precision

    save_preference_model(pm("gpm"), tmp_path / "gpm", save_backbone=True)
    message = "'gpm' model has no scalar reward; PPO needs kind bt or gated or a sequence-classification"
    with pytest.raises(PrefgameError, match=message):
        _load_reward_model(PPORewardConfig(path=str(tmp_path / "gpm")), "cpu", Precision())


SELFPLAY_TINY = [
    "sampling.prompts_per_iteration=4",
    "sampling.samples_per_prompt=3",
    "sampling.max_new_tokens=6",
    "train.iterations=1",
    "train.steps_per_iteration=2",
    "train.batch_size=6",
    "train.micro_batch_size=3",
    "train.lr=1e-2",
    "eval.every=1",
    "eval.prompts=12",
    "eval.samples_per_prompt=1",
    "eval.reference_samples_per_prompt=1",
]


def test_selfplay_with_a_sequence_classifier_oracle(pi0_dir, rm_dir, tmp_path, monkeypatch):
    """oracle.kind=model, oracle.path = the classifier: self-play asks it for the K×K matrices of an
    iteration in one call that scores each distinct (prompt, sample) once (at most 4 prompts × K = 4
    rows for the 4 × 6 pairs), and measures win rates with it; the arena's figures stay."""
    from prefgame.train.selfplay import run_selfplay

    calls = []  # (pairs asked, distinct (prompt, response) among them, rows the classifier scored)
    real_preference, real_scores = SequenceClassifierReward.preference, SequenceClassifierReward.scores

    def preference(self, xs, a, b):
        calls.append([len(a), len(set(zip([*xs, *xs], [*a, *b]))), 0])
        return real_preference(self, xs, a, b)

    def scores(self, sequences):
        calls[-1][2] += len(sequences)
        return real_scores(self, sequences)

    monkeypatch.setattr(SequenceClassifierReward, "preference", preference)
    monkeypatch.setattr(SequenceClassifierReward, "scores", scores)
    overrides = [
        *SELFPLAY_TINY, "sampling.samples_per_prompt=4", "oracle.kind=model", f"oracle.path={rm_dir}",
        "oracle.options={batch_size: 4}",
    ]  # fmt: skip
    metrics = run_selfplay(pi0_dir, algorithm="inpo", output_dir=tmp_path / "run", overrides=overrides)
    assert metrics["oracle"] == f"rm:{rm_dir}"
    assert all(rows == distinct for _, distinct, rows in calls)
    # the training iteration's matrices (the calls before are π0's measurement): 4 prompts × 6 pairs,
    # fewer when two samples coincide, and at most 4 × 4 rows
    train_calls = [c for c in calls if c[0] > 12]
    assert train_calls and all(c[0] <= 24 and c[2] <= 16 for c in train_calls)
    final = metrics["final"]
    assert 0.0 <= final["eval/win_rate_vs_ref"] <= 1.0 and math.isfinite(final["eval/exploitability"])
    before = load_file(str(pi0_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_online_dpo_with_a_sequence_classifier_oracle(pi0_dir, rm_dir, tmp_path):
    from prefgame.train import dpo
    from prefgame.train.dpo import DPOConfig

    cfg = load_config(
        DPOConfig,
        None,
        [
            "mode=online", f"output_dir={tmp_path / 'run'}", f"policy.name_or_path={pi0_dir}", "oracle.kind=model",
            f"oracle.path={rm_dir}", "online.rounds=1", "online.steps_per_round=1", "sampling.prompts_per_iteration=4",
            "sampling.samples_per_prompt=3", "sampling.max_new_tokens=8", "train.batch_size=4",
            "train.micro_batch_size=4", "train.warmup_steps=0", "train.mixed_precision=no", "eval.every=0",
            "eval.prompts=12", "eval.samples_per_prompt=1", "eval.reference_samples_per_prompt=1",
        ],
    )  # fmt: skip
    metrics = dpo.run(cfg)
    assert metrics["oracle"] == f"rm:{rm_dir}"
    assert 0.0 <= metrics["final"]["eval/win_rate_vs_ref"] <= 1.0


def test_oracle_kind_model_loads_either_source(rm_dir, tmp_path):
    """oracle.kind=model: a sequence classifier or a train-pm folder, on the accelerator when there is
    one; an empty path or an option a preference model does not take is one line."""
    oracle = build_oracle(OracleConfig(kind="model", path=str(rm_dir), options={"batch_size": 2}), None)
    assert isinstance(oracle, SequenceClassifierReward) and oracle.batch_size == 2
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(oracle.parameters()).device.type == expected
    path = tmp_path / "bt"
    save_preference_model(pm("bt"), path, save_backbone=True)
    loaded = build_oracle(OracleConfig(kind="model", path=str(path)), None)
    assert isinstance(loaded, PreferenceModel) and loaded.has_reward
    with pytest.raises(PrefgameError, match="needs oracle.path"):
        build_oracle(OracleConfig(kind="model"), None)
    with pytest.raises(PrefgameError, match="max_length apply to sequence-classification reward models only"):
        build_oracle(OracleConfig(kind="model", path=str(path), options={"max_length": 8}), None)


def test_evaluation_judge_kind_pm_takes_a_sequence_classifier(rm_dir):
    from evaluation.evaluate import JudgeChoice, build_judge

    judge = build_judge(JudgeChoice(kind="pm", path=str(rm_dir)))
    assert isinstance(judge, SequenceClassifierReward) and judge.name == f"rm:{rm_dir}"


def test_score_with_a_sequence_classifier(rm_dir, tmp_path):
    """prefgame score model=<classifier>: each row gets both rewards and P = σ(r_chosen − r_rejected)."""
    from prefgame.score import ScoreConfig, score

    pairs = export.labeled_pairs(Arena(), 24, np.random.default_rng(0))
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    out = tmp_path / "scored.jsonl"
    metrics = score(ScoreConfig(model=str(rm_dir), data=str(tmp_path / "pairs.jsonl"), out=str(out), batch_size=5))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(pairs) == metrics["n"] and metrics["model"] == str(rm_dir)
    rm = load_model(rm_dir)
    r_c = rm.reward([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    r_r = rm.reward([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    np.testing.assert_allclose([r["reward_chosen"] for r in rows], r_c.numpy(), atol=1e-6)
    np.testing.assert_allclose([r["reward_rejected"] for r in rows], r_r.numpy(), atol=1e-6)
    expected = torch.sigmoid(r_c.double() - r_r.double()).numpy()
    np.testing.assert_allclose([r["probability"] for r in rows], expected, atol=1e-6)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and (tmp_path / "scored.metrics.json").exists()


# ---------------------------------------------------------------------------------------------- K×K passes


def pm(kind: str, *, prompt_gate: bool = True, batch_size: int = 4) -> PreferenceModel:
    backbone = BackboneConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_length=64)
    cfg = PMModelConfig(kind=kind, backbone=backbone)
    cfg.gpm.prompt_gate = prompt_gate
    encoder = build_encoder(backbone, seed=0)
    torch.manual_seed(1)
    return PreferenceModel(encoder, [build_head(cfg, encoder.hidden_size)], cfg, batch_size=batch_size).eval()


@pytest.mark.parametrize("kind,prompt_gate,prompt_passes", [("gpm", True, 1), ("gpm", False, 0), ("bt", True, 0)])
def test_kxk_matrices_cost_k_backbone_passes_per_prompt(kind, prompt_gate, prompt_passes):
    """M = 3 prompts × K = 5 responses: the self-play matrix builder (group_matrices through the oracle
    cache, the K(K−1)/2 = 10 pairs of each prompt in one call) passes K rows per prompt through the
    backbone, and one for the prompt when the head reads it (the gpm prompt gate) — not the 3 per pair
    (30 per prompt) of embedding each pair's views separately. The matrices equal the model's own
    preference_matrix, and a cross matrix of K against K' = 2 costs K + K' (+ the prompt)."""
    model = pm(kind, prompt_gate=prompt_gate)
    xs, k = prompts(3), len(RESPONSES)
    texts = [f"{y} {m}" if i % 2 else y for m in range(3) for i, y in enumerate(RESPONSES)]  # distinct per prompt
    flat_prompts = [x for x in xs for _ in range(k)]
    with RowCounter(model.encoder.model) as count:
        mats = group_matrices(PreferenceCache(model), flat_prompts, texts, k)
    assert count.rows == 3 * (k + prompt_passes)
    assert mats.shape == (3, k, k)
    for m in range(3):
        with RowCounter(model.encoder.model) as alone:
            expected = model.preference_matrix(xs[m], texts[m * k : (m + 1) * k])
        assert alone.rows == k + prompt_passes
        torch.testing.assert_close(mats[m], expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(mats[m] + mats[m].T, torch.ones(k, k, dtype=torch.float64), rtol=0, atol=1e-15)
    opponents = [f"{y} again" for y in RESPONSES[:2]] * 3
    with RowCounter(model.encoder.model) as count:
        cross = cross_matrices(PreferenceCache(model), flat_prompts, texts, opponents, k, 2)
    assert cross.shape == (3, k, 2) and count.rows == 3 * (k + 2 + prompt_passes)


def test_sequence_classifier_kxk_matrices_cost_k_rows_per_prompt(rm):
    xs, k = prompts(3), len(RESPONSES)
    with RowCounter(rm.model) as count:
        mats = group_matrices(PreferenceCache(rm), [x for x in xs for _ in range(k)], RESPONSES * 3, k)
    assert count.rows == 3 * k
    torch.testing.assert_close(mats[1], rm.preference_matrix(xs[1], RESPONSES), rtol=0, atol=1e-12)


def test_blocks_of_rows_give_the_scores_of_one_block():
    """A call cut into blocks of a few distinct sequences scores every pair as one block does."""
    model = pm("gpm")
    xs = [x for x in prompts(4) for _ in range(6)]
    a = [RESPONSES[i % 5] for i in range(24)]
    b = [RESPONSES[(i + 2) % 5] for i in range(24)]
    whole = model.score(xs, a, b)
    model.block_sequences, model.batch_size = 5, 1  # rows 16 at a time, a block as soon as 5 are distinct
    with RowCounter(model.encoder.model) as count:
        blocks = model.score(xs, a, b)
    torch.testing.assert_close(blocks, whole, rtol=0, atol=1e-6)
    assert count.rows > 4 * 6  # blocks repeat sequences the whole call shares
    embedded = model.embed(("a", "b", "x"), xs, a, b)
    assert {v: e.shape for v, e in embedded.items()} == {v: (24, model.encoder.hidden_size) for v in "abx"}
