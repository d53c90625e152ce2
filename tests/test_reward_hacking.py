"""The linear LCB of a preference model (prefgame/models/pessimistic.py) against prefgame.pessimism by hand,
its exact anti-symmetry on a GPM, its config path (oracle, PPO reward), and the reward-hacking table
(evaluation/reward_hacking.py) on constructed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.reward_hacking import HackingConfig, hacking_curves, hacking_section, peak_table
from prefgame.arena import export
from prefgame.arena.world import Arena
from prefgame.errors import ConfigError
from prefgame.models import BackboneConfig, PMModelConfig, PreferenceModel, build_encoder, build_head
from prefgame.models.pessimistic import LinearLCB, linear_lcb_model
from prefgame.oracle import OracleConfig, PreferenceOracle, build_oracle
from prefgame.pessimism import PessimismConfig, best_of_n_kl, linear_lcb
from prefgame.run import write_jsonl

TINY = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32, "max_length": 96}


@pytest.fixture(scope="module")
def texts():
    rows = export.labeled_pairs(Arena(), 16, np.random.default_rng(5))
    return [r["prompt"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows]


def tiny_model(kind: str, *, hidden: int = 8, prompt_input: bool = True) -> PreferenceModel:
    cfg = PMModelConfig(kind=kind, backbone=BackboneConfig(**TINY))
    cfg.head.hidden_size, cfg.head.prompt_input = hidden, prompt_input
    encoder = build_encoder(cfg.backbone, seed=0)
    torch.manual_seed(1)
    head = build_head(cfg, encoder.hidden_size)
    return PreferenceModel(encoder, [head], cfg, batch_size=5).eval()


def test_bt_lcb_matches_the_pure_bound_by_hand(texts):
    prompts, chosen, rejected = texts
    model = tiny_model("bt")
    c, lam = 0.7, 0.5
    lcb = linear_lcb_model(model, PessimismConfig(kind="linear_lcb", c=c, lam=lam), offline=texts)

    # φ by hand: the head's last hidden layer, GELU(W1 · norm([h_{x,y}, h_x]) + b1)
    @torch.no_grad()
    def phi(ps, ys):
        emb = model.embed(("a", "x"), ps, ys, ys)
        u = model.heads[0].inputs(emb["a"], emb["x"])
        return F.gelu(model.heads[0].net[0](u)).double()

    phi_c = phi(prompts, chosen)
    with torch.no_grad():  # the reward is linear in φ: r̂ = w·φ + b
        linear = model.heads[0].net[-1](phi_c.float()).squeeze(-1)
    torch.testing.assert_close(linear, model.reward(prompts, chosen))
    d = phi_c - phi(prompts, rejected)
    sigma = lam * torch.eye(d.shape[1], dtype=torch.float64) + d.T @ d
    torch.testing.assert_close(lcb.sigma, sigma)

    ys = rejected[:5]
    ref = phi(prompts[:5], chosen[:5]).mean(0, keepdim=True).expand(5, -1)
    expected = linear_lcb(model.reward(prompts[:5], ys).double(), phi(prompts[:5], ys), ref, sigma, c)
    got = lcb.reward(prompts[:5], ys, ref)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    # the penalty by hand: c · sqrt(vᵀ Σ⁻¹ v)
    v = phi(prompts[:1], ys[:1]) - ref[:1]
    penalty = c * math.sqrt(float(v @ torch.linalg.inv(sigma) @ v.T))
    assert abs(float(model.reward(prompts[:1], ys[:1])) - penalty - float(got[0])) < 1e-5
    assert bool((got <= model.reward(prompts[:5], ys) + 1e-6).all())  # never above the estimate
    # without a reference: the offline responses to the same prompt are φ(x, π0)
    own = torch.cat([phi(prompts[:1], chosen[:1]), phi(prompts[:1], rejected[:1])]).mean(0, keepdim=True)
    torch.testing.assert_close(lcb.reward(prompts[:1], ys[:1]), lcb.reward(prompts[:1], ys[:1], own))
    # c = 0 is the model itself
    plain = linear_lcb_model(model, PessimismConfig(kind="linear_lcb", c=0.0), offline=texts)
    torch.testing.assert_close(plain.reward(prompts, ys * 4), model.reward(prompts, ys * 4))


@settings(max_examples=8, deadline=None)
@given(c=st.floats(0.0, 20.0), hidden=st.sampled_from([0, 8]), seed=st.integers(0, 3))
def test_pessimistic_gpm_logit_is_exactly_antisymmetric(texts, c, hidden, seed):
    prompts, a, b = texts
    torch.manual_seed(seed)
    model = tiny_model("gpm", hidden=hidden)
    lcb = linear_lcb_model(model, PessimismConfig(kind="linear_lcb", c=c), offline=(prompts[8:], a[8:], b[8:]))
    assert isinstance(lcb, PreferenceOracle)
    s_ab, s_ba = lcb.score(prompts, a, b), lcb.score(prompts, b, a)
    assert torch.equal(s_ab, -s_ba)
    assert torch.equal(lcb.score(prompts, a, a), torch.zeros(len(prompts), dtype=torch.float64))
    plain = model.score(prompts, a, b).double()
    assert bool((s_ab.abs() <= plain.abs()).all()) and bool((s_ab * plain >= 0).all())  # shrunk towards ½
    m = lcb.score_matrix(prompts[0], [*a[:3], *b[:3]])
    assert torch.equal(m, -m.T)
    # the matrix and the pairs agree
    torch.testing.assert_close(m[0, 3], lcb.score(prompts[:1], a[:1], b[:1])[0], rtol=1e-5, atol=1e-6)


def test_lcb_shrinks_more_where_offline_data_are_thin(texts):
    prompts, a, b = texts
    model = tiny_model("gpm")
    loose = linear_lcb_model(model, PessimismConfig(kind="linear_lcb", c=1.0, lam=100.0), offline=texts)
    tight = linear_lcb_model(model, PessimismConfig(kind="linear_lcb", c=1.0, lam=0.01), offline=texts)
    # a larger λ (less data-like) lowers the Σ⁻¹ norm: less shrinkage
    assert float(loose.score(prompts, a, b).abs().sum()) > float(tight.score(prompts, a, b).abs().sum())


def test_config_path_default_unchanged_and_errors(tmp_path, texts):
    from prefgame.models import save_preference_model

    prompts, chosen, rejected = texts
    save_preference_model(tiny_model("bt"), tmp_path / "bt", save_backbone=True)
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in zip(prompts, chosen, rejected)])
    plain = build_oracle(OracleConfig(kind="model", path=str(tmp_path / "bt")), Arena())
    assert isinstance(plain, PreferenceModel)  # the default: the model itself
    cfg = OracleConfig(kind="model", path=str(tmp_path / "bt"))
    cfg.pessimism = PessimismConfig(kind="linear_lcb", c=2.0, offline_pairs=str(pairs))
    lcb = build_oracle(cfg, Arena())
    assert isinstance(lcb, LinearLCB) and lcb.has_reward
    p = lcb.preference(prompts, chosen, rejected)
    torch.testing.assert_close(p + lcb.preference(prompts, rejected, chosen), torch.ones_like(p))
    with pytest.raises(ConfigError, match="offline_pairs"):
        cfg.pessimism.offline_pairs = ""
        build_oracle(cfg, Arena())
    with pytest.raises(ConfigError, match="kind=model only"):
        build_oracle(OracleConfig(kind="gold", pessimism=PessimismConfig(kind="linear_lcb")), Arena())


def test_ppo_reward_takes_the_lcb(tmp_path, texts):
    from prefgame.models import save_preference_model
    from prefgame.train.ppo import PPORewardConfig, _load_reward_model
    from prefgame.train.precision import Precision

    prompts, chosen, rejected = texts
    save_preference_model(tiny_model("bt"), tmp_path / "bt", save_backbone=True)
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in zip(prompts, chosen, rejected)])
    rc = PPORewardConfig(path=str(tmp_path / "bt"))
    assert isinstance(_load_reward_model(rc, "cpu", Precision()), PreferenceModel)
    rc.pessimism = PessimismConfig(kind="linear_lcb", c=3.0, offline_pairs=str(pairs))
    reward = _load_reward_model(rc, "cpu", Precision())
    assert isinstance(reward, LinearLCB)
    assert reward.reward(prompts, chosen).shape == (len(prompts),)


# -- the reward-hacking table ---------------------------------------------------------------------


def _pools(m: int = 6, n: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (m, n))


def test_a_gold_scorer_gives_a_monotone_curve_and_no_peak():
    gold = _pools()
    curves = hacking_curves({"gold": gold}, {"gold": gold}, gold, [1, 2, 4, 8, 16])
    g = curves["gold_win_rate"].to_numpy()
    assert abs(g[0] - gold.mean()) < 1e-12  # n = 1: π0 itself
    assert np.all(np.diff(g) > 0) and abs(g[-1] - gold.max(1).mean()) < 1e-12  # n = N: the pool's best
    assert np.allclose(curves["kl"], [best_of_n_kl(n) for n in (1, 2, 4, 8, 16)])
    peaks = peak_table(curves)
    assert peaks.loc["gold", "peak n"] == 16 and peaks.loc["gold", "fall after peak"] == 0.0
    assert not peaks.loc["gold", "falls (> 2 SE)"]


def test_a_hacked_scorer_peaks_then_falls():
    gold = _pools(m=40)
    # the proxy agrees with gold but for one sample per prompt, the gold-worst, that it rates above all
    hacked = gold.copy()
    hacked[np.arange(len(gold)), gold.argmin(1)] = 10.0
    ns = [1, 2, 4, 8, 16]
    curves = hacking_curves({"hacked": hacked, "gold": gold}, {"hacked": hacked, "gold": gold}, gold, ns)
    peaks = peak_table(curves)
    assert 1 < peaks.loc["hacked", "peak n"] < 16
    assert peaks.loc["hacked", "gold win rate at n=16"] == pytest.approx(gold.min(1).mean())
    assert peaks.loc["hacked", "falls (> 2 SE)"] and not peaks.loc["gold", "falls (> 2 SE)"]
    section = hacking_section(curves, peaks, "a constructed case", HackingConfig(pool=16, ns=ns))
    assert "reward_hacking" in section.figures and section.figures["reward_hacking"][:4] == b"\x89PNG"
    assert set(section.tables) == {"reward_hacking_gold", "reward_hacking_peaks"}


def test_picked_features_of_the_pool_and_of_the_best():
    from evaluation.reward_hacking import picked_features

    arena = Arena()
    prompt = "please tell me about music briefly and what is 1 plus 2 ?"
    short = "certainly music carries the rhythm . the answer is 3 ."
    words = short.split()
    long = " ".join(words[:-1] + ["it is indeed", ".", "indeed that matters", "."] * 4 + ["."])
    picks = picked_features(arena, [prompt], [[short, long]], {"likes long": np.array([[0.0, 1.0]])})
    assert picks.loc["π0 (the pool)", "words"] == (len(short.split()) + len(long.split())) / 2
    assert picks.loc["best of 2: likes long", "words"] == len(long.split())
    assert picks.loc["best of 2: likes long", "long"] == 1.0 and picks.loc["π0 (the pool)", "long"] == 0.5


def test_hacking_config_checks():
    with pytest.raises(ValueError, match="ns"):
        HackingConfig(pool=8, ns=[1, 16])
    with pytest.raises(ValueError, match="proxies"):
        HackingConfig(proxies=["nope"])


def test_evaluate_hacking_part_end_to_end(tmp_path):
    import json

    from prefgame.cli import main

    out = tmp_path / "eval"
    args = ["evaluate", "hacking", f"output_dir={out}", "hacking.pi0=demonstrator", "hacking.prompts=3",
            "hacking.pool=8", "hacking.ns=[1,2,8]", "hacking.train_pairs=60", "hacking.head_steps=3",
            "hacking.lcb_c=[4]", "hacking.ensemble_size=2"]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["proxy"] for r in metrics["reward_hacking"]] == [
        "BT", "BT + linear LCB (c=4)", "BT ensemble (pessimistic)", "GPM"
    ]  # fmt: skip
    report = (out / "report.md").read_text()
    assert "## Reward hacking" in report and (out / "figures" / "reward_hacking.png").is_file()
    assert "What π0's samples and each proxy's best of the pool are" in report
    curves = (out / "hacking" / "curves.csv").read_text().splitlines()
    assert len(curves) == 1 + 4 * 3
    assert main(["evaluate", "hacking", f"output_dir={tmp_path / 'e2'}", "hacking.pi0=nowhere"]) == 2


def test_penalty_scale_recovers_the_distance_per_unit_of_c():
    from evaluation.reward_hacking import penalty_scale

    r = np.array([[1.0, 3.0, 5.0], [0.0, 2.0, 4.0]])  # within-pool std 2 each
    d = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    stats = {"BT": (r, r), "BT + linear LCB (c=4)": (r - 4 * d, r)}
    scale = penalty_scale(stats, HackingConfig(lcb_c=[0.0, 4.0]))
    assert scale == pytest.approx({"distance": 0.2, "reward_std": 2.0})
    assert penalty_scale({"GPM": (r, r)}, HackingConfig()) == {}
