"""Preference-model trainer (prefgame.train.pm): configs, tiny end-to-end runs, exact resume, scoring.

Every run uses arena data and a new tiny backbone, a few steps each, on one thread.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from prefgame.arena import export
from prefgame.arena.world import Arena
from prefgame.config import load_config
from prefgame.errors import PrefgameError
from prefgame.models import load_preference_model
from prefgame.oracle import PreferenceOracle
from prefgame.run import RunDir, write_jsonl
from prefgame.score import ScoreConfig, score
from prefgame.train import pm as pm_module
from prefgame.train.pm import PMConfig, train_preference_model

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "pm").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(PMConfig, path)
    assert cfg.model.kind in ("bt", "gpm", "pairwise", "gated")
    if cfg.model.kind == "gated":
        assert cfg.data.ratings_path


def test_the_arena_configs_cover_every_kind():
    kinds = {load_config(PMConfig, p).model.kind for p in CONFIGS if not p.name.startswith(("qwen", "llama"))}
    assert kinds == {"bt", "gpm", "pairwise", "gated"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pm-data")
    arena, rng = Arena(), np.random.default_rng(0)
    pairs = [r for r in export.labeled_pairs(arena, 96, rng, minimal_pair_fraction=0.5) if r["chosen"] != r["rejected"]]
    write_jsonl(folder / "pairs.jsonl", pairs)
    write_jsonl(folder / "ratings.jsonl", export.ratings(arena, 64, rng))
    return folder


def _config(data: Path, out: Path, kind: str, **overrides) -> PMConfig:
    base = [
        f"output_dir={out}",
        f"model.kind={kind}",
        "model.backbone.hidden_size=16",
        "model.backbone.num_layers=1",
        "model.backbone.num_heads=2",
        "model.backbone.intermediate_size=32",
        "model.backbone.max_length=64",
        "model.head.hidden_size=8",
        f"data.path={data / 'pairs.jsonl'}",
        f"data.ratings_path={data / 'ratings.jsonl'}",
        "data.eval_fraction=0.25",
        "train.max_steps=6",
        "train.batch_size=16",
        "train.micro_batch_size=8",
        "train.lr=1e-2",
        "train.warmup_steps=1",
        "train.save_every=3",
        "train.eval_every=3",
        "train.log_every=1",
        "arena_metrics=true",
    ]
    return load_config(PMConfig, None, base + [f"{k}={v}" for k, v in overrides.items()])


def _train(cfg: PMConfig) -> dict:
    out = RunDir(cfg.output_dir)
    log = out.start_logging(quiet=True)
    try:
        if not cfg.resume:
            out.start_fresh()
        return train_preference_model(cfg, out, log)
    finally:
        out.close()


def _heads(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "heads.safetensors"))


KIND_SETTINGS = {
    "gpm-frozen": (
        "gpm",
        {"model.head.prompt_input": "true", "model.backbone.pooling": "sum", "model.backbone.layers": "[0]"},
    ),
    "bt-finetuned": ("bt", {"model.backbone.freeze": "false"}),
    "pairwise-finetuned": ("pairwise", {"model.backbone.freeze": "false", "loss.pairwise_single_pass": "true"}),
    "gated-sgd": (
        "gated",
        {
            "model.gated.stage1": "sgd",
            "model.gated.regression_hidden": "8",
            "model.gated.stage1_steps": "4",
            "model.gated.verbosity_objective": "detail",
            "model.head.prompt_input": "true",
        },
    ),
    "gated-ridge-ensemble": ("gated", {"model.ensemble.size": "2", "model.gated.verbosity_objective": "detail"}),
}


@pytest.mark.parametrize("name", list(KIND_SETTINGS))
def test_train_changes_heads_and_freezes_what_is_frozen(tmp_path, data, name):
    kind, overrides = KIND_SETTINGS[name]
    cfg = _config(data, tmp_path / "run", kind, **overrides)
    metrics = _train(cfg)
    assert metrics["kind"] == kind and metrics["nonfinite_steps"] == 0
    for key in ("accuracy", "log_loss", "ece", "per_subset", "per_section"):
        assert key in metrics["eval"]
    arena = metrics["arena"]
    assert 0.5 <= arena["bayes_accuracy"] <= 1.0 and "in_cycle" in arena
    if kind == "gated":
        assert set(metrics["stage1"]) == {"relevance", "correctness", "conciseness", "detail", "safety"}
        assert -1.0 <= arena["gating"]["pearson"] <= 1.0
        assert metrics["debias"]["verbosity_objective"] == "detail"
    model = load_preference_model(tmp_path / "run")
    assert isinstance(model, PreferenceOracle)
    # the same model before training: same seeds, zero steps
    untrained = _config(data, tmp_path / "untrained", kind, **{**overrides, "train.max_steps": "0"})
    if kind == "gated":
        untrained.model.gated.stage1_steps = 0
    _train(untrained)
    before, after = _heads(tmp_path / "untrained"), _heads(tmp_path / "run")
    # every weight matrix trains (biases of the last reward layer cancel in r_a − r_b)
    trained = [k for k in after if k.endswith("weight") and any(n in k for n in ("gate", "net", "embed", "regressor"))]
    assert trained and all(not torch.equal(before[k], after[k]) for k in trained), name
    backbone_before = load_file(str(tmp_path / "untrained" / "model" / "backbone" / "model.safetensors"))
    backbone_after = load_file(str(tmp_path / "run" / "model" / "backbone" / "model.safetensors"))
    same = all(torch.equal(backbone_before[k], backbone_after[k]) for k in backbone_after)
    assert same == cfg.model.backbone.freeze


@pytest.mark.parametrize("name,stop_at", [("gpm-frozen", 4), ("bt-finetuned", 4), ("gated-sgd", 5), ("gated-sgd", 8)])
def test_resume_equals_uninterrupted(tmp_path, data, monkeypatch, name, stop_at):
    kind, overrides = KIND_SETTINGS[name]
    full = _config(data, tmp_path / "full", kind, **overrides)
    _train(full)

    calls = {"n": 0}
    real_step = pm_module._train_step

    def crashing_step(*args, **kwargs):
        if calls["n"] == stop_at:
            raise KeyboardInterrupt("simulated interruption")
        calls["n"] += 1
        return real_step(*args, **kwargs)

    cut = _config(data, tmp_path / "cut", kind, **overrides)
    monkeypatch.setattr(pm_module, "_train_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        _train(cut)
    monkeypatch.setattr(pm_module, "_train_step", real_step)
    assert not (tmp_path / "cut" / "model").exists()
    cut.resume = True
    _train(cut)
    a, b = _heads(tmp_path / "full"), _heads(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if not full.model.backbone.freeze:
        wa = load_file(str(tmp_path / "full" / "model" / "backbone" / "model.safetensors"))
        wb = load_file(str(tmp_path / "cut" / "model" / "backbone" / "model.safetensors"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_score_writes_probabilities_next_to_rows(tmp_path, data):
    _train(_config(data, tmp_path / "run", "gpm", **{"train.max_steps": "2"}))
    metrics = score(
        ScoreConfig(model=str(tmp_path / "run"), data=str(data / "pairs.jsonl"), out=str(tmp_path / "scored.jsonl"))
    )
    rows = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    inputs = [json.loads(line) for line in (data / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == len(inputs) and all(r["prompt"] == i["prompt"] for r, i in zip(rows, inputs))
    assert all(0.0 <= r["probability"] <= 1.0 for r in rows)
    model = load_preference_model(tmp_path / "run")
    direct = model.preference(
        [r["prompt"] for r in inputs[:5]], [r["chosen"] for r in inputs[:5]], [r["rejected"] for r in inputs[:5]]
    )
    assert np.allclose([r["probability"] for r in rows[:5]], direct.numpy(), atol=1e-6)
    assert metrics["n"] == len(rows) and (tmp_path / "scored.metrics.json").exists()


def test_gated_needs_ratings(tmp_path, data):
    from prefgame.errors import PrefgameError

    cfg = _config(data, tmp_path / "run", "gated", **{"data.ratings_path": ""})
    with pytest.raises(PrefgameError, match="ratings_path"):
        _train(cfg)


def test_arena_function_small(tmp_path):
    from prefgame.train.pm_arena import ArenaPMConfig, train_arena_preference_models

    cfg = ArenaPMConfig(
        train_pairs=300, ratings=200, eval_pairs=200, head_steps=20, stage1_steps=20, head_hidden_size=16, batch_size=32
    )
    rows = train_arena_preference_models(tmp_path, cfg=cfg)
    assert [r.kind for r in rows] == ["bt", "gpm", "gated"]
    for r in rows:
        assert 0.5 <= r.bayes_accuracy <= 1.0 and 0.0 <= r.expected_accuracy <= r.bayes_accuracy + 1e-9
        assert (r.gating_correlation is not None) == (r.kind == "gated")
        oracle = load_preference_model(r.model_dir)
        prompt = "please explain music briefly and what is 1 plus 2 ?"
        a = "yeah , music carries the rhythm . the answer is 3 . cool ."
        b = "certainly , music carries the rhythm . the answer is 5 . indeed ."
        p = oracle.preference([prompt], [a], [b])
        assert p.shape == (1,) and 0.0 <= float(p) <= 1.0


# -- a kind registered by a test trains without edits elsewhere ---------------------------------------


class _DiffHead(torch.nn.Module):
    """A toy general-preference head: s(a, b) = w·u_a − w·u_b (u the standardized response vector)."""

    views = ("a", "b")

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        from prefgame.models import ResponseInput

        self.inputs = ResponseInput(in_dim, False)
        self.w = torch.nn.Linear(in_dim, 1, bias=False)

    def forward(self, emb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        f_a = self.w(self.inputs(emb["a"], None)).squeeze(-1)
        f_b = self.w(self.inputs(emb["b"], None)).squeeze(-1)
        return {"score": f_a - f_b}


@pytest.fixture
def toy_kind(monkeypatch):
    """Register a kind "toy" for one test: its record is all the code it has."""
    from typing import Literal

    from prefgame.models import KINDS, KindSpec
    from prefgame.models import model as model_module
    from prefgame.models.kinds import register

    spec = register(
        KindSpec(
            name="toy",
            build_head=lambda cfg, in_dim, objectives, verbosity_index: _DiffHead(in_dim),
            reward=False,
            help="a test's kind",
        )
    )
    # the config's choices are fixed when prefgame.models loads its kinds; a kind registered later
    # (here, by a test) joins them by name
    monkeypatch.setattr(model_module, "Kind", Literal[tuple(KINDS)])
    yield spec
    del KINDS["toy"]


@pytest.mark.parametrize("ensemble", [1, 2])
def test_a_kind_registered_in_a_test_trains_saves_and_loads(tmp_path, data, toy_kind, ensemble):
    cfg = _config(data, tmp_path / "run", "toy", **{"model.ensemble.size": str(ensemble)})
    metrics = _train(cfg)
    assert metrics["kind"] == "toy" and metrics["nonfinite_steps"] == 0 and "accuracy" in metrics["eval"]
    assert "stage1" not in metrics and "gating" not in metrics["arena"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in rows if "phase" in r} == {f"member-{i}" for i in range(ensemble)}
    assert json.loads((tmp_path / "run" / "model" / "preference_model.json").read_text())["kind"] == "toy"
    model = load_preference_model(tmp_path / "run")
    assert model.spec is toy_kind and len(model.heads) == ensemble
    untrained = _config(
        data, tmp_path / "untrained", "toy", **{"model.ensemble.size": str(ensemble), "train.max_steps": "0"}
    )
    _train(untrained)
    before, after = _heads(tmp_path / "untrained"), _heads(tmp_path / "run")
    assert [k for k in after if k.endswith("w.weight")] and all(
        not torch.equal(before[k], after[k]) for k in after if k.endswith("w.weight")
    )
    prompts = ["please explain music briefly and what is 1 plus 2 ?"] * 2
    a = ["yeah , music carries the rhythm . the answer is 3 . cool .", "music ."]
    b = ["certainly , music carries the rhythm . the answer is 5 . indeed .", "indeed , music ."]
    p_ab, p_ba = model.preference(prompts, a, b), model.preference(prompts, b, a)
    assert torch.allclose(p_ab + p_ba, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-15)
    m = model.preference_matrix(prompts[0], a + b)  # no score_matrix of its own: the K(K−1)/2 pairs
    assert torch.allclose(m[0, 2:3], model.preference(prompts[:1], a[:1], b[:1]), atol=1e-6)


# -- K-way rankings: the Plackett–Luce reward model ----------------------------------------------------

RANKINGS_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "data" / "ultrafeedback.jsonl"


def _ranking_config(out: Path, path: Path, *extra: str) -> PMConfig:
    """The tiny bt model of :func:`_config` on a rankings file (no arena metrics)."""
    settings = {
        "data.path": str(path), "arena_metrics": "false", "train.batch_size": "8", "train.micro_batch_size": "4",
        "train.lr": "3e-2", "train.save_every": "0", "train.eval_every": "0",
    }  # fmt: skip
    settings.update(item.split("=", 1) for item in extra)
    return _config(path.parent, out, settings.pop("model.kind", "bt"), **settings)


def test_ultrafeedback_rankings_train_a_plackett_luce_reward_model(tmp_path):
    """UltraFeedback-style four-completion rows train a bt reward with the Plackett–Luce loss: the loss
    starts near log 4! (equal rewards) and falls, and the held-out lists' ordered pairs are ranked above
    chance by the saved model."""
    cfg = _ranking_config(tmp_path / "run", RANKINGS_FIXTURE, "train.max_steps=40")
    metrics = _train(cfg)
    assert metrics["loss"] == "plackett_luce" and metrics["train_lists"] == 27
    assert metrics["train_pairs"] == 27 * 6 - metrics["train_tied_pairs"]
    assert metrics["eval_pairs"] == 9 * 6 - (1 if metrics["train_tied_pairs"] == 0 else 0)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert rows[0]["loss"] == pytest.approx(math.log(24), abs=0.5)
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0
    assert metrics["eval"]["accuracy"] > 0.8
    model = load_preference_model(tmp_path / "run")
    raw = [json.loads(line) for line in RANKINGS_FIXTURE.read_text().splitlines()]
    completions = raw[0]["completions"]
    rewards = model.reward([raw[0]["instruction"]] * 4, [c["response"] for c in completions])
    best = max(range(4), key=lambda i: completions[i]["overall_score"])
    assert int(rewards.argmax()) == best


def test_plackett_luce_on_two_way_lists_is_the_bt_trainer_on_the_same_pairs(tmp_path):
    """K = 2 rankings (the winner scored 1, the loser 0) train to the same heads as the BT loss on the same
    pairs: the same steps draw the same examples, and PL with K = 2 is −log σ(r_w − r_l)."""
    raw = [json.loads(line) for line in RANKINGS_FIXTURE.read_text().splitlines()]
    pairs, lists = [], []
    for r in raw:
        c = sorted(r["completions"], key=lambda c: -c["overall_score"])
        pairs.append({"prompt": r["instruction"], "chosen": c[0]["response"], "rejected": c[-1]["response"]})
        lists.append({"prompt": r["instruction"], "responses": [c[-1]["response"], c[0]["response"]], "scores": [0, 1]})
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    write_jsonl(tmp_path / "lists.jsonl", lists)
    common = ("train.max_steps=5", "loss.order_augmentation=false")
    bt = _train(_ranking_config(tmp_path / "bt", tmp_path / "pairs.jsonl", *common))
    pl = _train(_ranking_config(tmp_path / "pl", tmp_path / "lists.jsonl", *common))
    assert pl["train_lists"] == bt["train_pairs"]
    assert pl["eval"]["log_loss"] == pytest.approx(bt["eval"]["log_loss"], abs=1e-5)
    a, b = _heads(tmp_path / "bt"), _heads(tmp_path / "pl")
    # the last layer's bias shifts every reward alike: both losses give it an exact gradient of 0, and
    # Adam turns their different float32 rounding noise into steps of the learning rate's size
    shift = sorted(n for n in a if n.endswith(".bias"))[-1]
    assert shift == "0.net.2.bias"
    for name in a:
        if name != shift:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=name)


def test_rankings_refuse_a_kind_that_trains_on_pairs(tmp_path):
    cfg = _ranking_config(tmp_path / "run", RANKINGS_FIXTURE, "model.kind=gpm", "train.max_steps=1")
    with pytest.raises(PrefgameError, match="K-way rankings"):
        _train(cfg)


def test_plackett_luce_fine_tunes_the_backbone_too(tmp_path):
    """With model.backbone.freeze=false the rankings' response sequences pass the trained backbone."""
    cfg = _ranking_config(
        tmp_path / "run", RANKINGS_FIXTURE, "model.backbone.freeze=false", "model.head.prompt_input=true",
        "train.max_steps=3",
    )  # fmt: skip
    metrics = _train(cfg)
    assert metrics["train_lists"] == 27 and metrics["nonfinite_steps"] == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert load_preference_model(tmp_path / "run").reward(["How do I brew green tea?"], ["Steep it."]).shape == (1,)
