"""Few-step CPU tests of the DPO trainer (prefgame.train.dpo) on a tiny Llama (hidden 32, 2 layers) and
the exported arena pairs, and hand-checked values of its helpers.

What they show: a short offline run lowers the training loss from ln 2, every parameter moves, the
reference is π0 (the implicit rewards recomputed from π0 on disk match), a resumed run equals an
uninterrupted one bit for bit, micro-batches × accumulation give the full-batch update; the online
mode trains, keeps π0 fixed, and resumes exactly at round granularity.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from prefgame.config import load_config
from prefgame.lm import build_pairs_batch, load_causal_lm, load_tokenizer, truncate
from prefgame.losses import dpo_loss, gpo_loss, infonca_loss, nca_loss, pro_loss, slic_loss
from prefgame.train import dpo
from prefgame.train.dpo import DPOConfig, DPOLossConfig, PairLogps, best_worst_pairs, load_pair_set, ranked_groups
from prefgame.train.engine import step_indices
from prefgame.train.sft import SFTModelConfig, build_model, save_model


@pytest.fixture(scope="module")
def pi0(arena_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialized Llama saved as a π0 checkpoint (training needs no SFT to be tested)."""
    cfg = SFTModelConfig(
        tokenizer=str(arena_dir / "tokenizer"), hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64
    )
    model, tok = build_model(cfg, seed=0)
    path = tmp_path_factory.mktemp("pi0") / "model"
    save_model(model, tok, path)
    return path


def dpo_config(pi0: Path, arena_dir: Path, output_dir: Path, *overrides: str) -> DPOConfig:
    base = [
        f"output_dir={output_dir}",
        f"policy.name_or_path={pi0}",
        f"data.path={arena_dir / 'pairs.jsonl'}",
        "data.skip_invalid=true",
        "data.max_pairs=120",
        "data.eval_fraction=0.2",
        "data.max_length=64",
        "loss.beta=0.5",
        "loss.chunk_size=16",  # several chunks per micro-batch
        "train.lr=3e-3",
        "train.warmup_steps=1",
        "train.eval_every=0",
        "train.save_every=0",
        "train.log_every=1",
        "train.mixed_precision=no",
    ]
    return load_config(DPOConfig, None, [*base, *overrides])


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(pi0: Path, arena_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[DPOConfig, dict]:
    out = tmp_path_factory.mktemp("dpo")
    cfg = dpo_config(
        pi0, arena_dir, out, "train.max_steps=12", "train.batch_size=16", "train.micro_batch_size=16",
        "train.eval_every=6", "train.save_every=6", "eval.prompts=24", "eval.samples_per_prompt=1",
        "eval.reference_samples_per_prompt=1",
    )  # fmt: skip
    return cfg, dpo.run(cfg)


# -- helpers ----------------------------------------------------------------------------------------


def test_truncate_keeps_prompt_end_and_response_start() -> None:
    assert truncate([1, 2, 3], [4, 5], 8) == ([1, 2, 3], [4, 5])
    # 6 + 6 > 8: the prompt keeps max(8 − 6, 8 // 2) = 4 tokens from its end, the response the first 4
    assert truncate([1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], 8) == ([3, 4, 5, 6], [7, 8, 9, 10])


def test_best_worst_pairs_hand_example() -> None:
    # K = 3, two prompts: win rates (0.2, 0.9, 0.4) → best 1, worst 0; (0.5, 0.5, 0.5) → all tie, skipped
    chosen, rejected = best_worst_pairs(torch.tensor([0.2, 0.9, 0.4, 0.5, 0.5, 0.5], dtype=torch.float64), 3)
    assert chosen.tolist() == [1] and rejected.tolist() == [0]


def test_ranked_groups_hand_example() -> None:
    # K = 3: (0.2, 0.9, 0.4) → 1, 2, 0; all tie → skipped; (0.7, 0.1, 0.7) → 3·2+0, 3·2+2 (sample order), 3·2+1
    cols = ranked_groups(torch.tensor([0.2, 0.9, 0.4, 0.5, 0.5, 0.5, 0.7, 0.1, 0.7], dtype=torch.float64), 3)
    assert cols.tolist() == [[1, 6], [2, 8], [0, 7]]


def test_every_loss_type_selects_its_loss() -> None:
    """loss.loss_type → the pure loss with the config's options; listwise types on a pair are their K = 2 case."""
    gen = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(4))
    lc, lr = torch.full((5,), 7.0, dtype=torch.float64), torch.full((5,), 3.0, dtype=torch.float64)
    lengths = {"chosen_lengths": lc, "rejected_lengths": lr}

    def value(**kw):
        return float(dpo.pair_loss(DPOLossConfig(**kw), pc, pr, rc, rr, **lengths)[0])

    assert value(loss_type="ipo", beta=0.3, length_alpha=0.1) == float(
        dpo_loss(pc, pr, rc, rr, beta=0.3, loss_type="ipo", length_alpha=0.1, **lengths)[0]
    )
    for f in dpo.GPO_TYPES:
        expected = gpo_loss(pc, pr, rc, rr, beta=0.3, f=f, label_smoothing=0.1, length_alpha=0.1, **lengths)[0]
        assert value(loss_type=f, beta=0.3, label_smoothing=0.1, length_alpha=0.1) == float(expected), f
    expected = slic_loss(pc, pr, rc, rr, delta=2.0, sft_coef=0.3, use_reference=True, beta=0.3)[0]
    assert value(loss_type="slic", beta=0.3, slic_delta=2.0, sft_coef=0.3, slic_reference=True) == float(expected)
    sigmoid = value(loss_type="sigmoid", beta=0.3)
    assert value(loss_type="pro", beta=0.3) == pytest.approx(sigmoid, rel=1e-12)
    assert value(loss_type="infonca", beta=0.3, infonca_alpha=1e-3) == pytest.approx(sigmoid, rel=1e-12)
    policy, ref = torch.stack([pc, pr], -1), torch.stack([rc, rr], -1)
    scores = torch.tensor([[2.0, 1.0]] * 5, dtype=torch.float64)
    got = dpo.list_loss(DPOLossConfig(loss_type="nca", beta=0.3, infonca_alpha=0.5), policy, ref, scores, None)[0]
    assert float(got) == float(nca_loss(policy, ref, scores, beta=0.3, alpha=0.5)[0])
    got = dpo.list_loss(DPOLossConfig(loss_type="infonca", beta=0.3), policy, ref, scores, None)[0]
    assert float(got) == float(infonca_loss(policy, ref, scores, beta=0.3, alpha=1.0)[0])
    got = dpo.list_loss(DPOLossConfig(loss_type="pro", beta=0.3, sft_coef=0.2), policy, ref, scores, None)[0]
    assert float(got) == float(pro_loss(policy, ref, beta=0.3, sft_coef=0.2)[0])
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOLossConfig(loss_type="slic", label_smoothing=0.1)
    with pytest.raises(ValueError, match="length_alpha"):
        DPOLossConfig(loss_type="pro", length_alpha=0.1)


def test_pair_logps_equal_full_logits_log_softmax(pi0: Path) -> None:
    """Σ over response tokens of log_softmax(logits)[next token], from the model's own full logits."""
    model = load_causal_lm(str(pi0))
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14, 2]]
    batch = build_pairs_batch(prompts, responses, pad_id=0)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    logp = torch.log_softmax(logits, dim=-1)
    expected = []
    for b, (p, r) in enumerate(zip(prompts, responses)):  # token t of the response is predicted at len(p)+t−1
        expected.append(sum(float(logp[b, len(p) + t - 1, tok]) for t, tok in enumerate(r)))
    for chunk in (1, 3, 1024):
        got = PairLogps(model, chunk_size=chunk)(**batch)
        torch.testing.assert_close(got.double(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-5)
    mean = PairLogps(model, length_normalize=True)(**batch)
    want = torch.tensor([expected[0] / 2, expected[1] / 4], dtype=torch.float64)
    torch.testing.assert_close(mean.double(), want, rtol=0, atol=1e-5)


def test_load_pair_set_orders_pairs_and_drops_ties(tmp_path: Path, pi0: Path) -> None:
    rows = [
        {"prompt": "what is 1 plus 1 ?", "chosen": "the answer is 2 .", "rejected": "moonlit .", "label": 0.8},
        {"prompt": "what is 1 plus 2 ?", "chosen": "golden .", "rejected": "the answer is 3 .", "label": 0.3},
        {"prompt": "what is 2 plus 2 ?", "chosen": "golden .", "rejected": "moonlit .", "label": 0.5},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = load_tokenizer(str(pi0))
    pairs, info = load_pair_set(load_config(DPOConfig, None, [f"data.path={path}"]).data, tok)
    assert len(pairs) == 2 and info == {"rows": 3, "ties_dropped": 1}
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True).strip()  # noqa: E731
    assert decode(pairs.chosen_ids[0]) == "the answer is 2 ."
    assert decode(pairs.chosen_ids[1]) == "the answer is 3 ."  # label < ½: the pair is swapped
    assert all(ids[-1] == tok.eos_token_id for ids in pairs.chosen_ids + pairs.rejected_ids)


# -- a short offline run ----------------------------------------------------------------------------


def test_short_run_lowers_held_out_loss_and_writes_outputs(trained) -> None:
    cfg, metrics = trained
    out = Path(cfg.output_dir)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["eval"] == pytest.approx(metrics["eval"])
    # at step 0 the policy is π0: every log-ratio is 0, so the loss is −log σ(0) = ln 2 and rewards are 0
    assert saved["eval_initial"]["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert saved["eval_initial"]["eval_rewards/margin"] == pytest.approx(0.0, abs=1e-6)
    # a random tiny model on 92 pairs fits its training pairs (it cannot generalize from so few)
    first_loss = metric_rows(out)[0]["loss"]
    assert first_loss == pytest.approx(math.log(2), abs=1e-6) and saved["train_loss"] < math.log(2) - 0.1
    assert saved["train"]["rewards/margin"] > 0
    # 120 rows, 5 ties dropped, 20% held out
    assert (saved["train_pairs"], saved["eval_pairs"], saved["steps"]) == (92, 23, 12)
    for name in ("config.yaml", "metrics.json", "metrics.jsonl", "log.txt", "model/model.safetensors"):
        assert (out / name).is_file(), name
    rows = metric_rows(out)
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 13))
    assert [r["step"] for r in rows if "eval_loss" in r] == [6]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000006"]
    assert all(0.0 <= r["rewards/accuracy"] <= 1.0 for r in rows if "loss" in r)


def test_offline_run_is_measured_as_every_policy_trainer_measures(trained) -> None:
    """eval.prompts > 0: the trained policy against π0 on the held-out arena prompts, with the evaluator
    and names of self-play and PPO (π0 samples and the policy's differ, so KL is not 0)."""
    _, metrics = trained
    final = metrics["final"]
    assert 0.0 <= final["eval/gold_win_rate_vs_ref"] <= 1.0 and 0.0 <= final["eval/exploitability"] <= 0.5
    assert math.isfinite(final["eval/kl_to_ref"]) and final["eval/kl_to_ref"] != 0.0
    assert final["eval/response_tokens"] > 0 and "eval/win_rate_vs_ref" not in final  # no oracle offline


def test_every_parameter_changed_and_reference_is_pi0(trained, pi0: Path) -> None:
    cfg, metrics = trained
    policy, ref = load_causal_lm(str(Path(cfg.output_dir) / "model")), load_causal_lm(str(pi0))
    trained_params = dict(policy.named_parameters())
    for name, p0 in ref.named_parameters():
        assert not torch.equal(trained_params[name], p0), f"{name} did not change"
    # The implicit rewards of the final evaluation, β·log π/π0, recomputed with π0 read from disk:
    # the reference log-probs were computed once from π0 and never moved with the policy.
    tok = load_tokenizer(str(pi0))
    pairs, _ = load_pair_set(cfg.data, tok)
    order = np.random.default_rng(cfg.train.seed).permutation(len(pairs))
    eval_set = pairs.take(order[: metrics["eval_pairs"]])
    pol_c, pol_r = dpo.pair_logps(PairLogps(policy), eval_set, tok.pad_token_id, batch_size=64, device="cpu")
    ref_c, ref_r = dpo.pair_logps(PairLogps(ref), eval_set, tok.pad_token_id, batch_size=64, device="cpu")
    beta = cfg.loss.beta
    assert metrics["eval"]["eval_rewards/chosen"] == pytest.approx(float(beta * (pol_c - ref_c).mean()), abs=1e-4)
    assert metrics["eval"]["eval_rewards/rejected"] == pytest.approx(float(beta * (pol_r - ref_r).mean()), abs=1e-4)


# -- resume and invariance --------------------------------------------------------------------------


def test_resume_equals_uninterrupted(pi0: Path, arena_dir: Path, tmp_path: Path, monkeypatch) -> None:
    settings = (
        "train.max_steps=8", "train.batch_size=8", "train.micro_batch_size=4", "train.save_every=4",
        "train.eval_every=3", "train.keep_checkpoints=1",
    )  # fmt: skip
    dpo.run(dpo_config(pi0, arena_dir, tmp_path / "full", *settings))
    real_step_indices = dpo.step_indices
    step6 = []

    def interrupting_step_indices(n, batch_size, seed, step):
        step6.extend([step] if step == 6 else [])
        if len(step6) == 2:  # the step itself (drawn_indices looked at every step's pairs first)
            raise KeyboardInterrupt
        return real_step_indices(n, batch_size, seed, step)

    monkeypatch.setattr(dpo, "step_indices", interrupting_step_indices)
    with pytest.raises(KeyboardInterrupt):
        dpo.run(dpo_config(pi0, arena_dir, tmp_path / "part", *settings))
    monkeypatch.undo()
    out = tmp_path / "part"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000004"]
    assert not (out / "metrics.json").exists() and max(r["step"] for r in metric_rows(out)) == 6
    resumed = dpo.run(dpo_config(pi0, arena_dir, out, *settings, "resume=true"))
    assert "resumed from" in (out / "log.txt").read_text()
    expected, got = weights(tmp_path / "full"), weights(out)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert metric_rows(out) == metric_rows(tmp_path / "full")
    final = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert resumed["eval"] == final["eval"] and resumed["train_loss"] == final["train_loss"]


def test_reference_log_probs_of_the_drawn_pairs_only(pi0, arena_dir, tmp_path) -> None:
    """3 steps of 8 pairs draw 24 of the 92 training pairs (one epoch's permutation, no repeats): π0's
    log-probs are computed for those (the values of a pass over the whole set, up to the float rounding
    of other batch widths) and the held-out pairs; the other training pairs hold NaN, which no step reads."""
    cfg = dpo_config(pi0, arena_dir, tmp_path, "train.max_steps=3", "train.batch_size=8")
    tok, model = load_tokenizer(str(pi0)), load_causal_lm(str(pi0))
    train_set, eval_set, _ = dpo._split_pairs(cfg, tok)
    drawn = dpo.drawn_indices(len(train_set), cfg.train)
    steps = [step_indices(len(train_set), 8, cfg.train.seed, step) for step in range(3)]
    assert len(train_set) == 92 and drawn.tolist() == sorted(np.concatenate(steps).tolist()) and len(drawn) == 24
    module = PairLogps(model, chunk_size=16)
    acc = SimpleNamespace(device=torch.device("cpu"), autocast=contextlib.nullcontext)
    dpo._reference_logps(cfg, module, ((train_set, drawn), (eval_set, None)), tok.pad_token_id, acc)
    chosen, rejected = dpo.pair_logps(module, train_set, tok.pad_token_id, batch_size=92, device="cpu")
    undrawn = np.setdiff1d(np.arange(92), drawn)
    assert train_set.ref_chosen[undrawn].isnan().all() and train_set.ref_rejected[undrawn].isnan().all()
    torch.testing.assert_close(train_set.ref_chosen[drawn], chosen[drawn], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(train_set.ref_rejected[drawn], rejected[drawn], rtol=1e-5, atol=1e-4)
    assert len(eval_set) == 23 and not eval_set.ref_chosen.isnan().any() and not eval_set.ref_rejected.isnan().any()
    # the run's metrics say how many it drew; its losses are finite (no NaN reached a step)
    metrics = dpo.run(cfg)
    assert metrics["train_pairs_drawn"] == 24 and all(math.isfinite(r["loss"]) for r in metric_rows(tmp_path))


@pytest.mark.parametrize("variant", [(), ("loss.loss_type=ipo", "loss.length_alpha=0.02")])
def test_micro_batches_give_the_same_update_as_one_batch(pi0, arena_dir, tmp_path, variant) -> None:
    """Loss = Σ over the step's pairs / the global pair count: 4 micro-batches of 2 (sorted by length)
    accumulate the full batch's gradient, so loss and gradient norm per step match, and the weights."""
    for micro in (8, 2):
        cfg = dpo_config(
            pi0, arena_dir, tmp_path / f"micro{micro}", "train.max_steps=3", "train.batch_size=8",
            f"train.micro_batch_size={micro}", "data.eval_fraction=0", *variant,
        )  # fmt: skip
        dpo.run(cfg)
    for key in ("loss", "grad_norm", "rewards/margin"):
        values = [[r[key] for r in metric_rows(tmp_path / f"micro{m}")] for m in (8, 2)]
        # step 1 agrees to float32 summation order; later steps also carry the weights' Adam noise (below)
        assert values[0][0] == pytest.approx(values[1][0], rel=1e-5, abs=1e-6), key
        assert values[0] == pytest.approx(values[1], rel=1e-4, abs=1e-5), key
    one, accumulated = weights(tmp_path / "micro8"), weights(tmp_path / "micro2")
    for name in one:
        # Adam divides by √v: float32 summation noise in near-zero gradient entries is magnified, so the
        # weights agree to ~5e-6 (the learning rate, the size of one step, is 3e-3)
        torch.testing.assert_close(accumulated[name], one[name], rtol=0, atol=2e-5, msg=name)


# -- online ---------------------------------------------------------------------------------------


def online_config(pi0: Path, output_dir: Path, *overrides: str) -> DPOConfig:
    return load_config(
        DPOConfig,
        None,
        [
            "mode=online", f"output_dir={output_dir}", f"policy.name_or_path={pi0}", "oracle.kind=gold",
            "online.rounds=3", "online.steps_per_round=2", "sampling.prompts_per_iteration=6",
            "sampling.samples_per_prompt=3", "sampling.max_new_tokens=12", "train.batch_size=4",
            "train.micro_batch_size=2", "train.lr=3e-3", "train.warmup_steps=1", "train.mixed_precision=no",
            "eval.every=0", "eval.prompts=12", "eval.samples_per_prompt=1", "eval.reference_samples_per_prompt=1",
            "loss.beta=0.5", *overrides,
        ],
    )  # fmt: skip


def test_online_trains_keeps_reference_and_resumes_exactly(pi0: Path, tmp_path: Path, monkeypatch) -> None:
    real_round = dpo.online_round
    seen = []

    def recording_round(sp, t, prefs, cfg):
        seen.append(sp)
        return real_round(sp, t, prefs, cfg)

    monkeypatch.setattr(dpo, "online_round", recording_round)
    full = dpo.run(online_config(pi0, tmp_path / "full"))
    monkeypatch.undo()
    rows = metric_rows(tmp_path / "full")
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert all(r["pairs"] > 0 and r["win_rate_gap"] > 0 for r in rows[1:])
    assert full["initial"]["eval/kl_to_ref"] == pytest.approx(0.0, abs=1e-5)  # π_0 is π0 at round 0
    pi0_weights = load_causal_lm(str(pi0)).state_dict()
    policy = weights(tmp_path / "full")
    for name, p0 in pi0_weights.items():
        if name in policy:
            assert not torch.equal(policy[name], p0), f"{name} did not change"
    for name, value in seen[-1].ref.state_dict().items():  # the reference after the last round is π0
        assert torch.equal(value, pi0_weights[name]), name

    real_round = dpo.online_round

    def interrupting_round(sp, t, prefs, cfg):
        if t == 2:
            raise KeyboardInterrupt
        return real_round(sp, t, prefs, cfg)

    monkeypatch.setattr(dpo, "online_round", interrupting_round)
    with pytest.raises(KeyboardInterrupt):
        dpo.run(online_config(pi0, tmp_path / "part"))
    monkeypatch.undo()
    dpo.run(online_config(pi0, tmp_path / "part", "resume=true"))
    expected, got = weights(tmp_path / "full"), weights(tmp_path / "part")
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    # win_rate_vs_previous is measured against the last measured iterate, which a resumed run re-measures
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "eval/win_rate_vs_previous")} for r in rs]  # noqa: E731
    assert strip(metric_rows(tmp_path / "part")) == strip(rows)


def test_online_length_normalize_divides_policy_and_reference_logps_by_length(pi0: Path, tmp_path: Path, monkeypatch):
    """The online mode's length-normalized loss sees log π(y|x)/|y| and log π0(y|x)/|y| where the plain
    loss sees the sums: the first loss call of two runs with the same seed differs exactly by |y|."""
    calls: dict[str, list] = {}
    real_loss = dpo.dpo_loss

    def spy(tag):
        def recording_loss(pc, pr, rc, rr, **kw):
            calls.setdefault(tag, []).append([t.detach().clone() for t in (pc, pr, rc, rr, kw["chosen_lengths"])])
            calls[tag][-1].append(kw["rejected_lengths"].clone())
            return real_loss(pc, pr, rc, rr, **kw)

        return recording_loss

    for tag, extra in (("sum", []), ("mean", ["loss.length_normalize=true"])):
        monkeypatch.setattr(dpo, "dpo_loss", spy(tag))
        dpo.run(online_config(pi0, tmp_path / tag, "online.rounds=1", "online.steps_per_round=1", *extra))
    monkeypatch.undo()
    (pc, pr, rc, rr, lc, lr), (mpc, mpr, mrc, mrr, mlc, mlr) = calls["sum"][0], calls["mean"][0]
    assert torch.equal(lc, mlc) and torch.equal(lr, mlr) and bool((lc > 0).all())
    torch.testing.assert_close(mpc * lc, pc, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mpr * lr, pr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mrc * lc, rc, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mrr * lr, rr, rtol=1e-5, atol=1e-5)


def test_online_projects_loss_chunk_size_rows_at_a_time(pi0: Path, tmp_path: Path, monkeypatch) -> None:
    """loss.chunk_size reaches the online mode: its training passes and π0's log-probs project at most that
    many response rows to the vocabulary at once."""
    from prefgame.losses import logprobs

    projected: list[int] = []
    project = logprobs._project
    monkeypatch.setattr(logprobs, "_project", lambda h, w, b: projected.append(h.shape[0]) or project(h, w, b))
    dpo.run(online_config(pi0, tmp_path / "run", "online.rounds=1", "online.steps_per_round=1", "loss.chunk_size=2"))
    assert projected and max(projected) == 2


@pytest.mark.parametrize(
    ("mode", "path"), [("offline", "configs/dpo/arena.yaml"), ("online", "configs/dpo/arena-online.yaml")]
)
def test_shipped_arena_configs_match_presets(mode: str, path: str) -> None:
    """configs/dpo/arena*.yaml train what train_dpo_arena (ARENA_PRESETS) trains; only paths may differ."""
    root = Path(__file__).resolve().parents[1]
    shipped = load_config(DPOConfig, root / path, [])
    preset = load_config(DPOConfig, None, dpo.ARENA_PRESETS[mode])
    for section in ("loss", "train", "online", "sampling", "oracle", "eval"):
        assert getattr(shipped, section) == getattr(preset, section), section
    assert shipped.mode == preset.mode


def test_online_ranks_responses_without_eos_last(pi0: Path, tmp_path: Path, monkeypatch) -> None:
    """online.missing_eos_penalty: a response cut at max_new_tokens never beats a finished one of its
    prompt when best and worst are picked; the round's missing_eos metric is the share of cut responses."""
    samples, scores_seen = [], []
    real_pick, real_round = dpo.best_worst_pairs, dpo.online_round

    def picking(scores, k):
        scores_seen.append(scores.clone())
        return real_pick(scores, k)

    def sampling_round(sp, t, prefs, cfg):
        real_sample = sp.sample

        def sample(*args, **kwargs):
            samples.append(real_sample(*args, **kwargs))
            return samples[-1]

        sp.sample = sample
        try:
            return real_round(sp, t, prefs, cfg)
        finally:
            sp.sample = real_sample

    monkeypatch.setattr(dpo, "best_worst_pairs", picking)
    monkeypatch.setattr(dpo, "online_round", sampling_round)
    dpo.run(online_config(pi0, tmp_path / "run", "online.rounds=2", "sampling.max_new_tokens=8"))
    monkeypatch.undo()
    rows = metric_rows(tmp_path / "run")[1:]
    eos = load_tokenizer(str(pi0)).eos_token_id
    assert len(samples) == len(scores_seen) == len(rows) == 2
    mixed = 0
    for row, ys, scores in zip(rows, samples, scores_seen):
        cut = torch.tensor([ids[-1] != eos for ids in ys.response_ids])
        assert row["missing_eos"] == pytest.approx(float(cut.float().mean()))
        for group_cut, group in zip(cut.view(-1, 3), scores.view(-1, 3)):
            if group_cut.any() and not group_cut.all():
                mixed += 1
                assert not group_cut[group.argmax()]
    assert mixed > 0  # the check above ran


def test_online_listwise_ranks_all_k_samples_and_pro_with_two_is_dpo(pi0: Path, tmp_path: Path, monkeypatch) -> None:
    """Listwise online DPO trains on one K-way list per prompt, best first by win rate; with K = 2 the list
    is the best-vs-worst pair and PRO is DPO, so a PRO run and a sigmoid run end at the same weights."""
    seen = []
    real = dpo.list_loss

    def recording(cfg, policy, ref, scores, mask, **kw):
        seen.append(scores.detach().clone())
        assert policy.shape == ref.shape == scores.shape and policy.shape[1] == 3
        return real(cfg, policy, ref, scores, mask, **kw)

    monkeypatch.setattr(dpo, "list_loss", recording)
    m = dpo.run(online_config(pi0, tmp_path / "pro3", "online.rounds=1", "loss.loss_type=pro"))
    monkeypatch.undo()
    assert seen and all(bool((s[:, :-1] >= s[:, 1:]).all()) for s in seen)  # ranked best first
    assert metric_rows(tmp_path / "pro3")[-1]["lists"] > 0 and m["loss_type"] == "pro"
    k2 = ("online.rounds=2", "sampling.samples_per_prompt=2")
    dpo.run(online_config(pi0, tmp_path / "pro2", *k2, "loss.loss_type=pro"))
    dpo.run(online_config(pi0, tmp_path / "dpo2", *k2, "loss.loss_type=sigmoid"))
    pro, sig = weights(tmp_path / "pro2"), weights(tmp_path / "dpo2")
    for name in sig:
        torch.testing.assert_close(pro[name], sig[name], rtol=0, atol=1e-5, msg=name)


# -- offline, K-way rankings --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rankings_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 four-way arena rankings scored by the gold leave-one-out win rate (``prefgame arena rankings=…``)."""
    from prefgame.arena import export
    from prefgame.arena.world import Arena
    from prefgame.run import write_jsonl

    path = tmp_path_factory.mktemp("rankings") / "rankings.jsonl"
    write_jsonl(path, export.rankings(Arena(), 40, np.random.default_rng(0), k=4))
    return path


def test_offline_pro_trains_on_whole_rankings(pi0: Path, arena_dir: Path, rankings_file: Path, tmp_path: Path) -> None:
    """A listwise loss on rankings data reads the lists (not pairs): at step 1 the policy is π0, every
    implicit reward is 0 and PRO's loss is log 4! = 3.178 (every ranking equally likely); it then falls."""
    cfg = dpo_config(
        pi0, arena_dir, tmp_path / "pro", f"data.path={rankings_file}", "loss.loss_type=pro", "train.max_steps=6",
        "train.batch_size=8", "train.micro_batch_size=4", "data.eval_fraction=0.25",
    )  # fmt: skip
    m = dpo.run(cfg)
    rows = metric_rows(tmp_path / "pro")
    assert m["data"] == "ranked lists" and m["train_pairs"] == 30 and m["eval_pairs"] == 10
    assert rows[0]["loss"] == pytest.approx(math.log(24), abs=1e-4)
    assert m["eval_initial"]["eval_loss"] == pytest.approx(math.log(24), abs=1e-4)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.3  # 30 lists and a random tiny π0: held-out loss may rise
    assert {"eval_rewards/accuracy", "eval_rewards/top1", "eval_rewards/margin"} <= set(m["eval"])
    # a pair loss on the same file trains on each list's best-vs-worst pair
    cfg = dpo_config(
        pi0, arena_dir, tmp_path / "bw", f"data.path={rankings_file}", "train.max_steps=1", "data.eval_fraction=0",
    )  # fmt: skip
    bw = dpo.run(cfg)
    assert (bw["data"], bw["train_pairs"], bw["loss_type"]) == ("pairs", 40, "sigmoid")


def test_offline_pro_on_two_way_rankings_is_dpo_on_the_pairs(pi0: Path, arena_dir: Path, tmp_path: Path) -> None:
    """K = 2 lists (best first) and the same pairs: PRO and DPO take the same steps and end at the same weights."""
    from prefgame.run import write_jsonl

    pairs = [json.loads(x) for x in (arena_dir / "pairs.jsonl").read_text().splitlines()][:48]
    pairs = [p for p in pairs if p["chosen"] != p["rejected"] and p["label"] != 0.5]
    write_jsonl(tmp_path / "pairs.jsonl", [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    lists = [{"prompt": p["prompt"], "responses": [p["rejected"], p["chosen"]], "scores": [0, 1]} for p in pairs]
    write_jsonl(tmp_path / "lists.jsonl", lists)
    common = ("train.max_steps=4", "train.batch_size=8", "train.micro_batch_size=8", "data.eval_fraction=0.25")
    a = dpo.run(dpo_config(pi0, arena_dir, tmp_path / "dpo", f"data.path={tmp_path / 'pairs.jsonl'}", *common))
    b = dpo.run(
        dpo_config(
            pi0, arena_dir, tmp_path / "pro", f"data.path={tmp_path / 'lists.jsonl'}", "loss.loss_type=pro", *common
        )
    )
    assert (a["data"], b["data"]) == ("pairs", "ranked lists")
    assert b["eval"]["eval_loss"] == pytest.approx(a["eval"]["eval_loss"], abs=1e-5)
    wa, wb = weights(tmp_path / "dpo"), weights(tmp_path / "pro")
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=1e-5, msg=name)
