"""PPO with a BT reward model: the KL-in-loss estimators, GAE against a hand-computed sequence, and the
trainer on a tiny model (parameters change, reference and reward model do not, resume equals
uninterrupted, micro-batch × accumulation equals the full mini-batch, KV-cached rollouts).

The tiny policy is a random 2-layer Llama over the arena vocabulary and the reward model a random BT
head on a new 1-layer backbone: the tests check the mechanics, not that PPO learns anything.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from prefgame.arena.lm import build_tokenizer, tiny_llama_config
from prefgame.config import load_config
from prefgame.errors import ConfigError, PrefgameError
from prefgame.losses import compute_gae, kl_loss
from prefgame.models import (
    BackboneConfig,
    PMModelConfig,
    PreferenceModel,
    build_encoder,
    build_head,
    save_preference_model,
)
from prefgame.run import RunDir
from prefgame.train.ppo import PPO, PolicyWithValue, PPOConfig, ppo_config, train_ppo_arena

D = torch.float64
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "ppo"
TINY = [
    "train.iterations=2",
    "train.rollout_batch_size=8",
    "train.mini_batch_size=4",
    "train.micro_batch_size=4",
    "train.warmup_steps=0",
    "train.lr=1e-3",
    "ppo.epochs=2",
    "eval.prompts=12",
    "eval.samples_per_prompt=1",
    "eval.reference_samples_per_prompt=1",
    "eval.every=0",
    "sampling.max_new_tokens=10",
    "train.save_every=1",
]


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=D)


def close(actual, expected, tol: float = 1e-10) -> None:
    torch.testing.assert_close(torch.as_tensor(actual, dtype=D), torch.as_tensor(expected, dtype=D), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------- losses


def test_kl_loss_estimators_hand_values():
    """d = log π − log π0 = (0.5, −0.2) on the mask (third token masked out, holds garbage).
    k1 = mean d = 0.15;  k2 = mean ½d² = (0.125 + 0.02)/2 = 0.0725;
    k3 = mean (e^{−d} − 1 + d) = (e^{−0.5} − 0.5 + e^{0.2} − 1.2)/2.
    ∂k3/∂log π = 1 − e^{−d} per token, / 2 for the mean."""
    logps = t(0.5, -0.2, 9.0).view(1, 3).requires_grad_()
    ref = torch.zeros(1, 3, dtype=D)
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    close(kl_loss(logps, ref, mask, estimator="k1")[0], 0.15)
    close(kl_loss(logps, ref, mask, estimator="k2")[0], 0.0725)
    k3, metrics = kl_loss(logps, ref, mask, estimator="k3")
    close(k3, (math.exp(-0.5) - 0.5 + math.exp(0.2) - 1.2) / 2)
    close(metrics["kl"], 0.15)
    grad = torch.autograd.grad(k3, logps)[0]
    close(grad, t(1 - math.exp(-0.5), 1 - math.exp(0.2), 0.0).view(1, 3) / 2)
    # a global normalizer: sum over tokens / 4
    close(kl_loss(logps, ref, mask, estimator="k2", normalizer=4.0)[0], 0.145 / 4)
    with pytest.raises(ValueError):
        kl_loss(logps, ref, mask, estimator="k4")


def test_gae_hand_sequence_with_kl_shaped_rewards():
    """One response of 3 tokens, γ = 1, λ = 0.5, the reward's score 1 on the last token and a KL term
    −0.1·(0.2, −0.1, 0.3) = (−0.02, 0.01, −0.03): r = (−0.02, 0.01, 0.97); V = (0.3, 0.5, 0.8).
        δ2 = 0.97 − 0.8 = 0.17                       A2 = 0.17
        δ1 = 0.01 + 0.8 − 0.5 = 0.31                 A1 = 0.31 + 0.5·0.17 = 0.395
        δ0 = −0.02 + 0.5 − 0.3 = 0.18                A0 = 0.18 + 0.5·0.395 = 0.3775
    returns = A + V = (0.6775, 0.895, 0.97)."""
    from prefgame.losses import kl_penalized_rewards

    logps, ref = t(0.2, -0.1, 0.3).view(1, 3), torch.zeros(1, 3, dtype=D)
    mask = torch.ones(1, 3, dtype=torch.bool)
    rewards, _ = kl_penalized_rewards(t(1.0), logps, ref, mask, kl_coef=0.1)
    close(rewards, t(-0.02, 0.01, 0.97).view(1, 3))
    adv, ret = compute_gae(rewards, t(0.3, 0.5, 0.8).view(1, 3), mask, gamma=1.0, lam=0.5)
    close(adv, t(0.3775, 0.395, 0.17).view(1, 3))
    close(ret, t(0.6775, 0.895, 0.97).view(1, 3))


def test_whitening_from_summed_shard_moments_equals_global():
    """Two "processes" hold rows x = (1, 2 | masked 9) and (3, 5). Each shard's moments (Σx, Σx², n) are
    (3, 5, 2) and (8, 34, 2); their sum (11, 39, 4) gives x̄ = 2.75, var = (39 − 4·2.75²)/3 = 2.9166…,
    the global statistics, and not the per-shard ones (x̄ = 1.5 and 4)."""
    from prefgame.losses import masked_whiten
    from prefgame.losses.rl import masked_moments, whiten_from_moments

    x = torch.tensor([[1.0, 2.0, 9.0], [3.0, 5.0, 0.0]], dtype=D)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    shards = [masked_moments(x[i : i + 1], mask[i : i + 1]) for i in range(2)]
    close(shards[0], t(3.0, 5.0, 2.0))
    close(shards[1], t(8.0, 34.0, 2.0))
    total = shards[0] + shards[1]
    mean, std = 2.75, math.sqrt((39 - 4 * 2.75**2) / 3)
    expected = torch.tensor([[1 - mean, 2 - mean, 0.0], [3 - mean, 5 - mean, 0.0]], dtype=D) / std
    for i in range(2):  # each shard whitened with the global moments
        close(whiten_from_moments(x[i : i + 1], mask[i : i + 1], total, eps=0.0), expected[i : i + 1])
    close(whiten_from_moments(x, mask, total, eps=0.0), masked_whiten(x, mask, eps=0.0))
    close(
        whiten_from_moments(x, mask, total, shift_mean=False, eps=0.0),
        torch.where(mask, expected + mean, 0.0),
    )
    with pytest.raises(ValueError, match="at least 2"):
        whiten_from_moments(x, mask, t(1.0, 1.0, 1.0))


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def pi0_dir(tmp_path_factory, tok) -> Path:
    path = tmp_path_factory.mktemp("pi0")
    torch.manual_seed(0)
    cfg = tiny_llama_config(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory) -> Path:
    """A random BT reward model (new 1-layer backbone, linear head) saved as train-pm would."""
    path = tmp_path_factory.mktemp("rm") / "model"
    backbone = BackboneConfig(
        name_or_path="", hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=96
    )
    cfg = PMModelConfig(kind="bt", backbone=backbone)
    encoder = build_encoder(backbone, seed=0)
    torch.manual_seed(1)
    model = PreferenceModel(encoder, [build_head(cfg, encoder.hidden_size)], cfg)
    save_preference_model(model, path, save_backbone=True)
    return path


def run_ppo(pi0_dir, reward_dir, out: Path, *extra: str) -> dict:
    return train_ppo_arena(pi0_dir, reward_dir, out, overrides=[*TINY, *extra])


# ---------------------------------------------------------------------------------------------- trainer


def test_policy_value_forward_matches_plain_model(pi0_dir, tok):
    """log π from the shared-trunk module equals the causal LM's own log-softmax; V starts at 0."""
    from prefgame.lm import build_pairs_batch, encode_prompt, encode_response

    model = LlamaForCausalLM.from_pretrained(str(pi0_dir)).eval()
    module = PolicyWithValue(model, chunk_size=3)
    prompts = ["please explain garden briefly and what is 0 plus 3 ?", "tell me about music in detail"]
    batch = build_pairs_batch(
        [encode_prompt(tok, p) for p in prompts],
        [encode_response(tok, "the answer is 3 ."), encode_response(tok, "yeah")],
        tok.pad_token_id,
    )
    with torch.no_grad():
        logps, values = module(**batch)
        full = torch.log_softmax(model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    mask = batch["response_mask"][:, 1:].bool()
    expected = full[:, :-1].gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(logps[mask], expected[mask], rtol=1e-5, atol=1e-5)
    assert bool((logps[~mask] == 0).all()) and bool((values == 0).all())


def test_trainer_changes_policy_not_reference_or_reward(pi0_dir, reward_dir, tmp_path):
    metrics = run_ppo(pi0_dir, reward_dir, tmp_path / "run")
    before = LlamaForCausalLM.from_pretrained(str(pi0_dir)).state_dict()
    after = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert len(changed) == len(after), f"unchanged: {set(after) - set(changed)}"
    head = load_file(str(tmp_path / "run" / "value_head.safetensors"))
    assert head["weight"].abs().sum() > 0  # the value head left its zero initialization
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "clipfrac" in r]
    assert len(train_rows) == 2
    for key in ("score", "kl", "entropy", "clipfrac", "vf_loss", "pg_loss", "approx_kl", "eos_rate"):
        assert all(math.isfinite(r[key]) for r in train_rows), key
    assert metrics["final"]["eval/kl_to_ref"] != 0.0
    assert 0.0 <= metrics["final"]["eval/gold_win_rate_vs_ref"] <= 1.0
    assert metrics["nonfinite_steps"] == 0


def test_reference_and_reward_model_stay_frozen(pi0_dir, reward_dir, tmp_path):
    cfg = ppo_config(None, [f"policy.name_or_path={pi0_dir}", f"reward.path={reward_dir}",
                            f"output_dir={tmp_path}", *TINY])  # fmt: skip
    out = RunDir(cfg.output_dir)
    out.start_logging(quiet=True)
    ppo = PPO(cfg, out)
    ref0 = {k: v.clone() for k, v in ppo.ref.state_dict().items()}
    rm0 = {k: v.clone() for k, v in ppo.reward_model.state_dict().items()}
    policy0 = {k: v.clone() for k, v in ppo.policy.state_dict().items()}
    ro = ppo.rollout(0)
    ppo.optimize(ro, 0)
    out.close()
    assert all(torch.equal(v, ppo.ref.state_dict()[k]) for k, v in ref0.items())
    assert all(torch.equal(v, ppo.reward_model.state_dict()[k]) for k, v in rm0.items())
    assert not all(torch.equal(v, ppo.policy.state_dict()[k]) for k, v in policy0.items())
    assert not any(p.requires_grad for p in ppo.ref.parameters())
    assert not any(p.requires_grad for p in ppo.reward_model.parameters())
    # first epoch, first mini-batch: π = π_old, so the ratio is exactly 1 and nothing is clipped
    assert ro.old_logps.shape == ro.mask.shape == ro.values.shape


def test_rollout_quantities(pi0_dir, reward_dir, tmp_path):
    """Before any update π = π0: the KL term is 0 and log π_old equals log π0 on every token; the
    sequence score (standardized with π0's reward statistics) sits on the last response token; a
    response without EOS is penalized."""
    cfg = ppo_config(None, [f"policy.name_or_path={pi0_dir}", f"reward.path={reward_dir}",
                            f"output_dir={tmp_path}", *TINY, "reward.missing_eos_penalty=5",
                            "ppo.whiten_advantages=false", "ppo.lam=1"])  # fmt: skip
    out = RunDir(cfg.output_dir)
    out.start_logging(quiet=True)
    ppo = PPO(cfg, out)
    ro = ppo.rollout(0)
    out.close()
    torch.testing.assert_close(ro.old_logps, ro.ref_logps, rtol=0, atol=1e-6)
    assert abs(ro.metrics["kl"]) < 1e-5
    normalized = (ppo.scores(ro.responses) - ppo.score_shift) / ppo.score_scale
    scores = normalized - 5.0 * ppo.eos_missing(ro.responses).float()
    assert ppo.score_scale > 0 and ppo.score_shift != 0
    assert ro.metrics["score"] == pytest.approx(float(ppo.scores(ro.responses).mean()), abs=1e-6)
    # γ = λ = 1, V = 0 (zero-initialized head), zero KL: the first token's return is the (penalized) score
    first = ro.mask.float().argmax(-1)
    returns0 = ro.returns[torch.arange(len(first)), first]
    torch.testing.assert_close(returns0, scores.to(returns0), rtol=1e-5, atol=1e-5)
    # the rollout's response ids come from the KV-cached sampler and carry EOS when they stop early
    eos = ppo.tok.eos_token_id
    assert all((r[-1] == eos) or len(r) == cfg.sampling.max_new_tokens for r in ro.responses.response_ids)


def test_micro_batches_with_accumulation_equal_full_mini_batch(pi0_dir, reward_dir, tmp_path):
    """The gradient of one mini-batch of 8 sequences: 1 micro-batch of 8 equals 3 micro-batches
    (3, 3, 2) accumulated, each normalized by the mini-batch's token count."""
    grads = []
    for micro in (8, 3):
        cfg = ppo_config(None, [f"policy.name_or_path={pi0_dir}", f"reward.path={reward_dir}",
                                f"output_dir={tmp_path / str(micro)}", *TINY, "train.mini_batch_size=8",
                                f"train.micro_batch_size={micro}", "ppo.kl_in_loss=true"])  # fmt: skip
        out = RunDir(cfg.output_dir)
        out.start_logging(quiet=True)
        ppo = PPO(cfg, out)
        ro = ppo.rollout(0)
        # perturb the policy so ratios differ from 1 and the clipping and KL terms are active
        with torch.no_grad():
            for p in ppo.policy.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        rows = np.arange(8)
        n_tokens = float(ro.mask[torch.as_tensor(rows)].sum())
        for start in range(0, 8, micro):
            loss, _ = ppo.micro_loss(ro, rows[start : start + micro], n_tokens)
            loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in ppo.module.parameters() if p.grad is not None]))
        out.close()
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_resume_equals_uninterrupted(pi0_dir, reward_dir, tmp_path):
    """A run interrupted after iteration 1 (its checkpoint kept, everything later removed) and resumed
    ends with the same weights, metrics rows and final figures as the uninterrupted run."""
    full = run_ppo(pi0_dir, reward_dir, tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "split")
    shutil.rmtree(tmp_path / "split" / "model")
    (tmp_path / "split" / "metrics.json").unlink()
    assert [p.name for p in (tmp_path / "split" / "checkpoints").iterdir()] == ["step-00000001"]
    resumed = run_ppo(pi0_dir, reward_dir, tmp_path / "split", "resume=true")
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final"] == full["final"]
    assert resumed["initial"] == full["initial"]
    rows_a = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    drop = lambda r: {k: v for k, v in json.loads(r).items() if k not in ("seconds", "time")}  # noqa: E731
    assert [drop(r) for r in rows_a] == [drop(r) for r in rows_b]


def test_config_files_load_and_errors(tmp_path, reward_dir):
    for path in sorted(CONFIGS.glob("*.yaml")):
        if path.name.endswith("reward.yaml"):
            from prefgame.train.pm import PMConfig

            assert load_config(PMConfig, path).model.kind == "bt"
        else:
            assert isinstance(load_config(PPOConfig, path), PPOConfig)
    with pytest.raises(PrefgameError, match="policy.name_or_path"):
        train_ppo_arena("", reward_dir, tmp_path / "x", overrides=TINY)
    with pytest.raises(ConfigError, match="multiple"):
        ppo_config(None, ["train.rollout_batch_size=6", "train.mini_batch_size=4"])


def test_flat_config_for_trackers():
    """Nested keys join with dots; non-scalar leaves (a list, None) become strings."""
    from prefgame.train.engine import flat_config

    nested = {"ppo": {"kl_coef": 0.05, "kl_in_loss": True}, "train": {"seed": 1, "sched": [1, 2]}, "x": None}
    assert flat_config(nested) == {
        "ppo.kl_coef": 0.05,
        "ppo.kl_in_loss": True,
        "train.seed": 1,
        "train.sched": "[1, 2]",
        "x": "None",
    }


def test_arena_yaml_holds_the_defaults():
    """configs/ppo/arena.yaml documents the arena defaults train_ppo_arena uses: apart from the paths, every
    field equals PPOConfig()'s."""
    from prefgame.config import config_to_dict

    yaml_cfg = config_to_dict(load_config(PPOConfig, CONFIGS / "arena.yaml"))
    defaults = config_to_dict(PPOConfig())
    for cfg in (yaml_cfg, defaults):
        cfg.pop("output_dir"), cfg["policy"].pop("name_or_path"), cfg["reward"].pop("path")
    assert yaml_cfg == defaults
