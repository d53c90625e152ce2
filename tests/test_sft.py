"""Few-step CPU tests of the SFT trainer (prefgame.train.sft) on a tiny Llama (hidden 32, 2 layers)
trained on the exported arena corpus, and of the ``sample`` helper of prefgame.lm.

What they show: a short run lowers the held-out loss and writes its outputs; every parameter moves;
the saved model loads with ``from_pretrained``; a run interrupted after a checkpoint and resumed ends
with bit-identical weights and metrics; micro-batching does not change the update.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefgame.config import load_config
from prefgame.game.lm_sampling import sample_texts as sample
from prefgame.lm import encode_prompt, encode_response, load_causal_lm, load_tokenizer
from prefgame.train import sft
from prefgame.train.sft import SFTConfig, build_model, response_nll


def sft_config(arena_dir: Path, output_dir: Path, *overrides: str) -> SFTConfig:
    """A tiny-model config on the arena corpus; ``overrides`` are ``key=value`` strings."""
    base = [
        f"output_dir={output_dir}",
        f"data.path={arena_dir / 'sft.jsonl'}",
        f"model.tokenizer={arena_dir / 'tokenizer'}",
        "model.hidden_size=32",
        "model.num_layers=2",
        "model.num_heads=2",
        "model.intermediate_size=64",
        "data.max_length=64",
        "data.eval_fraction=0.1",
        "train.lr=3e-3",
        "train.warmup_steps=3",
        "train.eval_every=0",
        "train.save_every=0",
        "train.log_every=1",
        "train.mixed_precision=no",
    ]
    return load_config(SFTConfig, None, [*base, *overrides])


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(arena_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[SFTConfig, dict]:
    """50 steps of 16 examples (540 train / 60 eval rows), evaluated and checkpointed at step 25."""
    out = tmp_path_factory.mktemp("sft")
    cfg = sft_config(
        arena_dir,
        out,
        "train.max_steps=50",
        "train.batch_size=16",
        "train.micro_batch_size=16",
        "train.eval_every=25",
        "train.save_every=25",
    )
    return cfg, sft.run(cfg)


# -- a short run ------------------------------------------------------------------------------------


def test_short_run_lowers_held_out_loss(trained, arena_dir: Path) -> None:
    cfg, metrics = trained
    saved = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    assert (saved["steps"], saved["train_examples"], saved["eval_examples"]) == (50, 540, 60)
    # A fresh model with small weights predicts nearly uniformly: NLL ≈ ln |V| (95 arena tokens).
    vocab = len(load_tokenizer(str(arena_dir / "tokenizer")))
    assert saved["eval_loss_initial"] == pytest.approx(math.log(vocab), abs=0.15)
    assert saved["eval_loss"] < saved["eval_loss_initial"] - 0.8
    assert saved["nonfinite_steps"] == 0 and math.isfinite(saved["train_loss"])


def test_run_writes_its_outputs(trained) -> None:
    cfg, _ = trained
    out = Path(cfg.output_dir)
    for name in (
        "config.yaml",
        "metrics.json",
        "metrics.jsonl",
        "log.txt",
        "model/model.safetensors",
        "model/config.json",
        "model/tokenizer.json",
    ):
        assert (out / name).is_file(), name
    assert load_config(SFTConfig, out / "config.yaml") == cfg
    assert not [p for p in (out / "model").iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    rows = metric_rows(out)
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 51))
    assert [r["step"] for r in rows if "eval_loss" in r] == [25]  # the final eval is in metrics.json
    lrs = [r["lr"] for r in rows if "loss" in r]
    assert max(lrs) == pytest.approx(cfg.train.lr) and lrs[-1] == pytest.approx(0.0, abs=1e-12)  # cosine to 0
    assert all(r["grad_norm"] > 0 for r in rows if "loss" in r)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000025"]
    assert "sft done" in (out / "log.txt").read_text()


def test_saved_model_loads_and_every_parameter_changed(trained) -> None:
    cfg, metrics = trained
    out = Path(cfg.output_dir)
    model, tok = load_causal_lm(str(out / "model")), load_tokenizer(str(out / "model"))
    initial, _ = build_model(cfg.model, cfg.train.seed)  # the same seeded initialization
    trained_params = dict(model.named_parameters())
    for name, p0 in initial.named_parameters():
        assert not torch.equal(trained_params[name], p0), f"{name} did not change"
    rows = [json.loads(line) for line in Path(cfg.data.path).read_text().splitlines()]
    examples = [(encode_prompt(tok, r["prompt"]), encode_response(tok, r["response"])) for r in rows]
    nll = response_nll(model, examples, tok.pad_token_id)
    assert nll < metrics["eval_loss_initial"] - 0.8  # the loaded weights are the trained ones
    assert abs(nll - metrics["eval_loss"]) < 0.2  # train and held-out rows come from one distribution


def test_sample_returns_strings_and_is_deterministic_for_a_seed(trained, arena_dir: Path) -> None:
    cfg, _ = trained
    model = load_causal_lm(str(Path(cfg.output_dir) / "model"))
    tok = load_tokenizer(str(Path(cfg.output_dir) / "model"))
    prompts = [json.loads(line)["prompt"] for line in (arena_dir / "sft.jsonl").read_text().splitlines()[:6]]
    model.train()
    first = sample(model, tok, prompts, max_new_tokens=20, seed=3, batch_size=4)
    assert model.training  # the mode is restored
    assert len(first) == len(prompts) and all(isinstance(s, str) for s in first)
    assert sample(model, tok, prompts, max_new_tokens=20, seed=3, batch_size=4) == first
    assert sample(model, tok, prompts, max_new_tokens=20, seed=4, batch_size=4) != first
    greedy = sample(model, tok, prompts, max_new_tokens=20, temperature=0.0)
    assert sample(model, tok, prompts, max_new_tokens=20, temperature=0.0, seed=99) == greedy
    for text in first + greedy:  # special tokens are stripped; at most 20 words (one token per word)
        assert "<eos>" not in text and "<pad>" not in text and len(text.split()) <= 20


# -- resume and invariance --------------------------------------------------------------------------


def test_resume_equals_uninterrupted(arena_dir: Path, tmp_path: Path, monkeypatch) -> None:
    settings = (
        "train.max_steps=10",
        "train.batch_size=8",
        "train.micro_batch_size=4",
        "train.save_every=4",
        "train.eval_every=3",
        "train.keep_checkpoints=1",
    )
    full = sft_config(arena_dir, tmp_path / "full", *settings)
    sft.run(full)

    # Interrupt the second run at the start of step 7 (0-based 6): six steps done, the last checkpoint at 4.
    part = sft_config(arena_dir, tmp_path / "part", *settings)
    real_step_indices = sft.step_indices

    def interrupting_step_indices(n, batch_size, seed, step):
        if step == 6:
            raise KeyboardInterrupt
        return real_step_indices(n, batch_size, seed, step)

    monkeypatch.setattr(sft, "step_indices", interrupting_step_indices)
    with pytest.raises(KeyboardInterrupt):
        sft.run(part)
    monkeypatch.undo()
    out = tmp_path / "part"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000004"]
    assert not (out / "metrics.json").exists() and not (out / "model").exists()
    assert max(r["step"] for r in metric_rows(out)) == 6  # steps 5 and 6 will be replayed

    resumed = sft.run(sft_config(arena_dir, out, *settings, "resume=true"))
    assert "resumed from" in (out / "log.txt").read_text()
    expected, got = weights(tmp_path / "full"), weights(out)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert metric_rows(out) == metric_rows(tmp_path / "full")
    final = json.loads((tmp_path / "full" / "metrics.json").read_text())
    for key in ("train_loss", "eval_loss", "eval_loss_initial", "steps", "train_examples"):
        assert resumed[key] == final[key], key


def test_micro_batches_give_the_same_update_as_one_batch(arena_dir: Path, tmp_path: Path) -> None:
    # The loss is a sum over the step's response tokens divided by their count, so 4 micro-batches of 2
    # accumulate the same gradient as one batch of 8 (up to float32 summation order).
    runs = {}
    for micro in (8, 2):
        cfg = sft_config(
            arena_dir,
            tmp_path / f"micro{micro}",
            "train.max_steps=3",
            "train.batch_size=8",
            f"train.micro_batch_size={micro}",
            "data.eval_fraction=0",
        )
        runs[micro] = sft.run(cfg)
    one, accumulated = weights(tmp_path / "micro8"), weights(tmp_path / "micro2")
    for name in one:
        torch.testing.assert_close(accumulated[name], one[name], rtol=0, atol=1e-6, msg=name)
    # Loss and gradient norm (before clipping) are scale-sensitive, unlike Adam's update.
    for key in ("loss", "grad_norm"):
        values = [[r[key] for r in metric_rows(tmp_path / f"micro{m}")] for m in (8, 2)]
        assert values[0] == pytest.approx(values[1], rel=1e-5), key
    assert runs[8]["eval_loss"] is None and runs[8]["eval_examples"] == 0
