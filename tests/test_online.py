"""``prefgame online`` (prefgame/train/online.py): the loop on tiny settings, exact label counts, the label
budget, resume equal to an uninterrupted run, the uncertainty enhancer's choice, the warm starts it relies
on (policy.init_from, train-pm init_from), and one-line errors for bad settings."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import oracles, tiny
from helpers.launch import assert_same_weights, load_weights, start_prefgame

from prefgame.cli import main
from prefgame.config import load_config
from prefgame.data.columns import load_pairs_or_rankings
from prefgame.run import RunDir, read_jsonl
from prefgame.train.online import ENHANCER_SAMPLES, OnlineConfig, OnlineLoop, labeled_rows, most_uncertain, stream_seed


def online_args(pi0: Path, out: Path, *extra: str) -> list[str]:
    """Two labeling rounds of 8 pairs, 20-step fits of a small GPM, one self-play iteration per solve."""
    return [*tiny.online_args(pi0), f"output_dir={out}", *extra]


@pytest.fixture(scope="module")
def pi0(arena_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    policy, _ = tiny.train_pi0_and_reward(arena_dir, tmp_path_factory.mktemp("pi0"))
    return policy


def without_timings(obj):
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if not k.endswith("seconds")}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def assert_same_run(full: Path, other: Path, note: str = "") -> None:
    """Final policy, final preference model, labels file and metrics equal bit for bit (but wall times)."""
    m_full, m_other = (json.loads((d / "metrics.json").read_text()) for d in (full, other))
    assert without_timings(m_other) == without_timings(m_full), note
    assert_same_weights(full / m_full["policy"], other / m_other["policy"])
    assert_same_weights(full / m_full["preference_model"], other / m_other["preference_model"])
    assert (other / "labels.jsonl").read_bytes() == (full / "labels.jsonl").read_bytes(), note
    rows = [without_timings(read_jsonl(d / "metrics.jsonl")) for d in (full, other)]
    assert rows[0] == rows[1], note


@pytest.fixture(scope="module")
def full_run(pi0: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("online") / "full"
    assert main(["online", *online_args(pi0, out)]) == 0
    return out


# -- the loop --------------------------------------------------------------------------------------------


def test_two_rounds_fit_solve_label_and_a_last_fit_and_solve(full_run: Path, pi0: Path) -> None:
    """Round 0 has no label yet (π0 is the main agent); rounds 1 and 2 fit R̂ on every label so far and
    self-play against it from the previous round's policy; rounds 0 and 1 label 8 pairs each."""
    m = json.loads((full_run / "metrics.json").read_text())
    assert m["start"] == "online" and m["rounds"] == 2 and m["stopped"] == {"by": "rounds", "round": 2}
    rows = m["history"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert [r["policy_trained"] for r in rows] == [False, True, True]
    labeled = [r.get("label/labeled") for r in rows]
    assert labeled[2] is None and all(0 < n <= 8 for n in labeled[:2])
    assert rows[1]["pm/train_pairs"] == labeled[0]  # R̂_1: round 0's labels
    assert rows[2]["pm/train_pairs"] == labeled[0] + labeled[1]  # R̂_2: every label
    assert m["policy"] == "rounds/round-002/policy/model" and m["preference_model"] == "rounds/round-002/pm/model"
    recorded = yaml.safe_load((full_run / "rounds/round-002/policy/config.yaml").read_text())
    assert recorded["policy"]["init_from"] == str(full_run / "rounds/round-001/policy/model")  # warm start
    assert recorded["policy"]["name_or_path"] == str(pi0)  # π0 stays the reference
    assert recorded["oracle"] == {
        **recorded["oracle"],
        "kind": "model",
        "path": str(full_run / "rounds/round-002/pm/model"),
    }
    assert m["initial"]["eval/gold_win_rate_vs_ref"] == rows[0]["eval/gold_win_rate_vs_ref"]  # π0, one stream
    assert m["final"]["eval/exploitability"] == rows[2]["eval/exploitability"]
    steps = [r["step"] for r in read_jsonl(full_run / "metrics.jsonl")]
    assert steps == [0, 1, 2]


def test_labels_are_counted_exactly(pi0: Path, tmp_path: Path, monkeypatch) -> None:
    """Every pair the oracle is asked about is one label: labels.jsonl, metrics.json and the oracle's own
    count agree, offline π0 pairs included, and the judge cost it reports is summed."""
    monkeypatch.setattr(oracles.CountingGold, "asked", [])
    out = tmp_path / "run"
    factory = ["oracle.kind=factory", "oracle.factory=helpers.oracles:counting_gold", "offline.pairs=6"]
    assert main(["online", *online_args(pi0, out, *factory)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    asked = sum(oracles.CountingGold.asked)
    rows = read_jsonl(out / "labels.jsonl")
    assert m["labels"]["used"] == asked == len(rows) == m["history"][-1]["labels_used"]
    assert m["labels"]["offline_labeled"] == sum(r["source"] == "offline-labeled" for r in rows)
    assert m["labels"]["online"] == sum(r["source"] == "online" for r in rows) == asked - m["labels"]["offline_labeled"]
    skipped = m["labels"]["identical_pairs_skipped"] + m["labels"]["empty_pairs_skipped"]
    assert asked + skipped == 6 + 2 * 8  # every pair asked for was labeled or skipped, none twice
    assert m["labels"]["judge"]["pairs"] == asked and m["labels"]["judge"]["cost"] == pytest.approx(0.01 * asked)
    assert m["start"] == "hybrid"


def test_a_label_budget_that_runs_out_mid_round_ends_the_run_cleanly(pi0: Path, tmp_path: Path) -> None:
    """Budget 12 with 8 pairs per round: round 0 asks for 8, round 1 for what is left (< 8); the run keeps
    every label, fits and solves once more on them, exits 0, and says the budget ended it."""
    out = tmp_path / "run"
    assert main(["online", *online_args(pi0, out, "online.rounds=5", "online.label_budget=12")]) == 0
    m = json.loads((out / "metrics.json").read_text())
    used = m["labels"]["used"]
    assert m["stopped"]["by"] == "label_budget" and m["stopped"]["round"] == 1, m["stopped"]
    assert m["stopped"]["pairs_asked"] == 12 - m["history"][0]["label/labeled"] < 8
    assert m["rounds"] == 2 and [r["round"] for r in m["history"]] == [0, 1, 2]
    assert used <= 12 and m["labels"]["budget"] == 12
    pairs = load_pairs_or_rankings(str(out / "labels.jsonl"), "train", skip_invalid=False)  # every row valid
    assert len(pairs) == used == len(read_jsonl(out / "labels.jsonl"))
    assert m["history"][-1]["pm/train_pairs"] == used  # the last fit read every label
    assert (out / m["policy"] / "model.safetensors").exists()
    assert "the label budget (12) ended it in round 1" in (out / "log.txt").read_text()


def test_an_interrupted_run_resumes_to_the_uninterrupted_one(full_run: Path, pi0: Path, tmp_path: Path, monkeypatch):
    """A run stopped in round 2's solve (after its fit) and resumed with resume=true ends with the same policy,
    preference model, labels file and metrics as the uninterrupted run."""
    out = tmp_path / "run"
    real = OnlineLoop.solve

    def stop_in_round_2(self, t, *args):
        if t == 2:
            raise KeyboardInterrupt
        return real(self, t, *args)

    monkeypatch.setattr(OnlineLoop, "solve", stop_in_round_2)
    assert main(["online", *online_args(pi0, out)]) == 130
    assert not (out / "metrics.json").exists() and (out / "rounds/round-002/pm/metrics.json").exists()
    monkeypatch.setattr(OnlineLoop, "solve", real)
    assert main(["online", *online_args(pi0, out, "resume=true")]) == 0
    assert_same_run(full_run, out)


@pytest.mark.slow
def test_sigkill_at_a_random_point_then_resume_equals_uninterrupted(full_run: Path, pi0: Path, tmp_path: Path):
    """Killed with SIGKILL at a random moment of its run (a fraction of an uninterrupted run's wall time,
    drawn from PREFGAME_FAULT_SEED), resumed with resume=auto: bit-identical to the uninterrupted run."""
    seed = int(os.environ.get("PREFGAME_FAULT_SEED", time.time_ns() % 2**31))
    out = tmp_path / "killed"
    t0 = time.monotonic()
    reference = start_prefgame("online", *online_args(pi0, tmp_path / "timed"))
    assert reference.wait(timeout=300) == 0
    wall = time.monotonic() - t0
    delay = random.Random(seed).uniform(0.15, 0.9) * wall
    note = f"PREFGAME_FAULT_SEED={seed} (kill after {delay:.1f} of {wall:.1f} s)"
    proc = start_prefgame("online", *online_args(pi0, out))
    try:
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL, note
    assert main(["online", *online_args(pi0, out, "resume=auto")]) == 0, note
    assert_same_run(full_run, out, note)


# -- the enhancers ---------------------------------------------------------------------------------------


def test_most_uncertain_picks_the_largest_disagreement_by_hand() -> None:
    # 3 members, 2 prompts, 3 candidates. Prompt 0: candidate 0 (½, ½, ½) has std 0, candidate 1 (0.1, 0.9,
    # 0.5) std sqrt(2·0.4²/3) ≈ 0.327, candidate 2 (0.2, 0.4, 0.3) std sqrt(2·0.1²/3) ≈ 0.082 → 1. Prompt 1:
    # candidates 0 and 1 agree (std 0), candidate 2 (0, 1, 1) has std sqrt(2/9) ≈ 0.471 → 2.
    probs = torch.tensor(
        [
            [[0.5, 0.1, 0.2], [0.7, 0.7, 0.0]],
            [[0.5, 0.9, 0.4], [0.7, 0.7, 1.0]],
            [[0.5, 0.5, 0.3], [0.7, 0.7, 1.0]],
        ],
        dtype=torch.float64,
    )
    assert most_uncertain(probs).tolist() == [1, 2]
    assert most_uncertain(torch.full((2, 1, 3), 0.5)).tolist() == [0]  # ties: the first candidate


def test_the_uncertainty_enhancer_returns_the_candidate_its_ensemble_disagrees_on(pi0, tmp_path, monkeypatch):
    """The loop's enhancer samples its candidates from π0 and returns, per prompt, the one whose pair with the
    main agent's response the ensemble's members disagree on most (a constructed ensemble: member k says
    P = ½ ± d_j with d chosen per candidate position j)."""
    settings = ["enhancer.kind=uncertainty", "pm.ensemble=3", "enhancer.candidates=3"]
    cfg = load_config(OnlineConfig, None, online_args(pi0, tmp_path / "run", *settings))
    out = RunDir(tmp_path / "run")
    loop = OnlineLoop(cfg, out, out.start_logging(quiet=True), None)
    spread = {0: [0.0, 0.3, 0.1], 1: [0.2, 0.05, 0.45]}  # prompt → d per candidate: picks 1 and 2

    class Ensemble:
        def member_preferences(self, prompts, a, b):
            d = torch.tensor([spread[i // 3][i % 3] for i in range(len(a))], dtype=torch.float64)
            return torch.stack([0.5 + d, 0.5 - d, torch.full_like(d, 0.5)])

    monkeypatch.setattr("prefgame.models.load.load_model", lambda path, **kw: Ensemble())
    prompts = loop.train_prompts[:2]
    chosen, figures = loop.enhance(4, prompts, ["a b", "c d"], loop.pi0, pm="constructed")
    candidates = loop.sample(
        loop.pi0, [p for p in prompts for _ in range(3)], stream_seed(cfg.seed, 4, ENHANCER_SAMPLES)
    )
    assert chosen == [candidates[1], candidates[5]]
    assert figures["enhancer/disagreement_chosen"] > figures["enhancer/disagreement_mean"]
    out.close()


def test_labeled_rows_put_the_preferred_response_first() -> None:
    probs = torch.tensor([0.8, 0.3], dtype=torch.float64)
    rows = labeled_rows(["x", "y"], ["a", "b"], ["c", "d"], probs, round_=1, source="online")
    assert [(r["chosen"], r["rejected"], r["label"]) for r in rows] == [("a", "c", 0.8), ("d", "b", pytest.approx(0.7))]
    drawn = labeled_rows(["x"], ["a"], ["c"], probs[:1], round_=1, source="online", draws=[0.9])
    assert (drawn[0]["chosen"], drawn[0]["label"], drawn[0]["chosen_is_main"]) == ("c", 1.0, False)


def test_streams_differ_by_round_and_purpose() -> None:
    seeds = {stream_seed(0, t, p) for t in range(4) for p in range(10)}
    assert len(seeds) == 40 and stream_seed(3, 1, 2) == stream_seed(3, 1, 2)


# -- the warm starts -------------------------------------------------------------------------------------


def test_policy_init_from_starts_from_other_weights_with_pi0_as_reference(full_run: Path, pi0: Path, tmp_path):
    """A self-play run of zero iterations with policy.init_from saves the weights it started from, not π0's."""
    start = full_run / "rounds/round-001/policy/model"
    out = tmp_path / "sp"
    args = [*tiny.selfplay_args(pi0), "train.iterations=0", "eval.prompts=0", f"policy.init_from={start}"]
    assert main(["selfplay", *args, f"output_dir={out}"]) == 0
    got, started, ref = load_weights(out / "model"), load_weights(start), load_weights(pi0)
    assert all(torch.equal(got[k], started[k]) for k in got)
    assert any(not torch.equal(got[k], ref[k]) for k in got)


def test_train_pm_init_from_starts_from_the_heads_it_names(full_run: Path, tmp_path: Path, capsys) -> None:
    """train-pm with init_from and no step saves the heads it was given (standardization included); heads of
    another shape are one line."""
    source = full_run / "rounds/round-001/pm"
    out = tmp_path / "pm"
    common = ["--config", str(source / "config.yaml"), "train.max_steps=0", "resume=false", f"init_from={source}"]
    assert main(["train-pm", *common, f"output_dir={out}"]) == 0
    assert_same_weights(source / "model", out / "model")
    capsys.readouterr()
    assert main(["train-pm", *common, "model.head.hidden_size=8", f"output_dir={tmp_path / 'other'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit this model's heads" in err[0], err


# -- bad settings ----------------------------------------------------------------------------------------

BAD = {
    "uncertainty-without-ensemble": (["enhancer.kind=uncertainty"], "needs an ensemble: set pm.ensemble ≥ 2"),
    "best-of-one": (["enhancer.kind=best_of_n", "enhancer.candidates=1"], "set enhancer.candidates ≥ 2"),
    "ppo-on-a-gpm": (["solver.kind=ppo"], "solver.kind=ppo needs a reward: pm.kind=bt"),
    "nothing-to-fit": (["online.rounds=0"], "no labels to fit"),
    "offline-over-budget": (["offline.pairs=20", "online.label_budget=10"], "exceeds online.label_budget=10"),
    "unknown-key": (["enhancer.kindd=reference"], "unknown config key 'enhancer.kindd'"),
    "bad-solver-override": (["solver.overrides=[train.lrr=1]"], "solver.overrides: unknown config key 'train.lrr'"),
    "bad-pm-override": (["pm.overrides=[model.kindd=bt]"], "pm.overrides: unknown config key 'model.kindd'"),
}


@pytest.mark.parametrize("name", BAD)
def test_a_bad_config_is_one_line(name: str, pi0: Path, tmp_path: Path, capsys) -> None:
    extra, fragment = BAD[name]
    capsys.readouterr()
    out = tmp_path / "run"
    args = online_args(pi0, out, *extra)
    if name in ("bad-solver-override", "bad-pm-override"):
        args = [a for a in args if not a.startswith("solver.overrides=")] + extra
    assert main(["online", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prefgame online: error: ") and fragment in err[0], err
    assert not (out / "metrics.json").exists()
