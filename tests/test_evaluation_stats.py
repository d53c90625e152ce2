"""Statistics core of evaluation/: win rates, LC win rate, BT ratings, agreement. Expected values are
derived by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from evaluation import (
    accuracy_by_subset,
    agreement,
    agreement_matrix,
    bt_ratings,
    cohen_kappa,
    length_controlled_win_rate,
    longer_response_win_rate,
    position_consistency,
    predicted_win_rate,
    win_rate,
    win_rate_matrix,
)
from prefgame.errors import DataError

# ---------------------------------------------------------------------------------------------------
# win_rate
# ---------------------------------------------------------------------------------------------------


def test_win_rate_with_ties_hand_example():
    # mean = (1 + 1 + 0 + 0.5) / 4 = 0.625
    # deviations 0.375, 0.375, -0.625, -0.125; squares sum 0.140625*2 + 0.390625 + 0.015625 = 0.6875
    # sample var = 0.6875 / 3; SE = sqrt(0.6875 / 3) / sqrt(4) = 0.2393568...
    wr = win_rate([1, 1, 0, 0.5], n_bootstrap=200)
    assert wr.mean == pytest.approx(0.625, abs=1e-12)
    assert wr.standard_error == pytest.approx(math.sqrt(0.6875 / 3) / 2, abs=1e-12)
    assert (wr.n, wr.n_wins, wr.n_ties, wr.n_losses) == (4, 2, 1, 1)
    assert 0.0 <= wr.ci_low <= wr.mean <= wr.ci_high <= 1.0


def test_win_rate_bootstrap_ci_is_deterministic_and_close_to_normal_interval():
    outcomes = np.random.default_rng(1).choice([0.0, 0.5, 1.0], size=2000, p=[0.3, 0.1, 0.6])
    a = win_rate(outcomes, seed=7)
    b = win_rate(outcomes, seed=7)
    c = win_rate(outcomes, seed=8)
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert (a.ci_low, a.ci_high) != (c.ci_low, c.ci_high)
    assert a.ci_low < a.mean < a.ci_high
    # With n = 2000 the percentile interval is close to mean ± 1.96 SE.
    assert a.ci_low == pytest.approx(a.mean - 1.96 * a.standard_error, abs=0.006)
    assert a.ci_high == pytest.approx(a.mean + 1.96 * a.standard_error, abs=0.006)


def test_win_rate_rejects_out_of_range():
    with pytest.raises(DataError):
        win_rate([0.2, 1.5])
    with pytest.raises(DataError):
        win_rate([0.2, float("nan")])


# ---------------------------------------------------------------------------------------------------
# length_controlled_win_rate
# ---------------------------------------------------------------------------------------------------


def test_lc_without_length_variation_equals_raw_soft_win_rate_exactly():
    # Equal lengths -> s = 0, the length term is dropped; the intercept-only stationarity condition
    # sum_i (sigma(theta) - y_i) = 0 gives sigma(theta) = mean(y) even for soft targets.
    y = np.array([0.9, 0.2, 0.65, 1.0, 0.5, 0.3, 0.8])
    lc = length_controlled_win_rate(y, [100] * 7, [100] * 7, n_bootstrap=0)
    assert lc.lc_win_rate == pytest.approx(y.mean(), abs=1e-7)
    assert lc.win_rate == pytest.approx(y.mean(), abs=1e-12)
    assert lc.length_coef == 0.0 and lc.length_std == 0.0


def test_lc_equals_raw_when_length_is_unrelated_to_outcome():
    rng = np.random.default_rng(0)
    n = 3000
    y = (rng.random(n) < 0.7).astype(float)
    len_model = rng.normal(500, 150, n)
    len_base = rng.normal(450, 150, n)
    lc = length_controlled_win_rate(y, len_model, len_base, n_bootstrap=30)
    assert lc.lc_win_rate == pytest.approx(lc.win_rate, abs=0.02)
    assert abs(lc.length_coef) < 0.3
    assert lc.ci_low < lc.lc_win_rate < lc.ci_high


def test_lc_removes_a_pure_length_advantage():
    # The model only wins because it is longer: P(win) = sigma(2 tanh(delta / std(delta))), with
    # delta / std ~ N(1, 1) so the raw win rate is about E[sigma(2 tanh(N(1, 1)))] ~ 0.75 while the
    # win rate at zero length difference is sigma(0) = 0.5.
    rng = np.random.default_rng(0)
    n = 4000
    delta = rng.normal(1.0, 1.0, n) * 300.0
    std = delta.std()
    y = (rng.random(n) < expit(2.0 * np.tanh(delta / std))).astype(float)
    len_base = rng.uniform(200, 400, n)
    lc = length_controlled_win_rate(y, len_base + delta, len_base, n_bootstrap=30)
    assert lc.win_rate > 0.7
    assert lc.lc_win_rate == pytest.approx(0.5, abs=0.04)
    assert lc.length_coef == pytest.approx(2.0, abs=0.3)
    assert lc.length_std == pytest.approx(std, rel=1e-12)


def test_lc_difficulty_terms_have_zero_mean_and_soak_up_instruction_effects():
    # 40 instructions with true difficulty d_x (mean 0), 30 judgments each, no length effect.
    # sum_x delta_x = 0 holds at the optimum (see docstring), and sigma(theta) ~ sigma(0.5).
    rng = np.random.default_rng(3)
    d = rng.normal(0, 1.0, 40)
    d -= d.mean()
    ids = np.repeat(np.arange(40), 30)
    y = (rng.random(ids.size) < expit(0.5 + d[ids])).astype(float)
    lens = rng.normal(300, 50, (2, ids.size))
    lc = length_controlled_win_rate(y, lens[0], lens[1], instruction_ids=ids, n_bootstrap=0)
    assert lc.instruction_difficulty.sum() == pytest.approx(0.0, abs=1e-3)  # to solver precision
    assert lc.lc_win_rate == pytest.approx(expit(0.5), abs=0.05)
    assert np.corrcoef(lc.instruction_difficulty.to_numpy(), d)[0, 1] > 0.8


# ---------------------------------------------------------------------------------------------------
# win_rate_matrix
# ---------------------------------------------------------------------------------------------------


def test_win_rate_matrix_hand_example():
    battles = pd.DataFrame(
        {
            "model_a": ["A", "B", "A", "A"],
            "model_b": ["B", "A", "B", "C"],
            "winner": ["model_a", "model_a", "tie", "model_b"],
        }
    )
    m = win_rate_matrix(battles)
    # A vs B from A's side: 1 (A won), 0 (B won as model_a), 0.5 (tie) -> 0.5
    assert m.loc["A", "B"] == pytest.approx(0.5)
    assert m.loc["B", "A"] == pytest.approx(0.5)
    assert m.loc["A", "C"] == 0.0 and m.loc["C", "A"] == 1.0
    assert np.isnan(m.loc["B", "C"]) and np.isnan(m.loc["C", "B"])
    assert list(np.diag(m.to_numpy())) == [0.5, 0.5, 0.5]
    assert list(m.index) == ["A", "B", "C"]


# ---------------------------------------------------------------------------------------------------
# bt_ratings
# ---------------------------------------------------------------------------------------------------


def test_bt_two_models_exact_rating_difference():
    # A beats B 6 times, B beats A 2 times, 2 ties (half a win each way): A's win fraction
    # p = (6 + 1) / 10 = 0.7; the unregularized MLE gives R_A - R_B = 400 log10(0.7 / 0.3).
    battles = pd.DataFrame(
        {
            "model_a": ["A"] * 4 + ["B"] * 6,
            "model_b": ["B"] * 4 + ["A"] * 6,
            "winner": ["model_a"] * 3 + ["tie"] + ["model_b"] * 3 + ["model_a"] * 2 + ["tie"],
        }
    )
    table = bt_ratings(battles, baseline="B", l2=0.0, n_bootstrap=0)
    assert table.loc["B", "rating"] == pytest.approx(1000.0, abs=1e-9)
    assert table.loc["A", "rating"] - table.loc["B", "rating"] == pytest.approx(400 * math.log10(0.7 / 0.3), abs=1e-4)
    assert table.loc["A", "win_rate_vs_baseline"] == pytest.approx(0.7, abs=1e-7)
    assert table.loc["B", "win_rate_vs_baseline"] == pytest.approx(0.5, abs=1e-12)
    assert predicted_win_rate(table, "A", "B") == pytest.approx(0.7, abs=1e-7)
    assert list(table["n_battles"]) == [10, 10]


def test_bt_natural_scale_and_mean_anchor():
    # base e, scale 1: rating difference = logit(p) = ln(0.7 / 0.3); no baseline -> mean = init_rating.
    battles = pd.DataFrame({"model_a": ["x"] * 10, "model_b": ["y"] * 10, "outcome": [0.7] * 10})
    table = bt_ratings(battles, scale=1.0, base=math.e, init_rating=0.0, l2=0.0, n_bootstrap=0)
    assert table.loc["x", "rating"] == pytest.approx(0.5 * math.log(0.7 / 0.3), abs=1e-6)
    assert table["rating"].mean() == pytest.approx(0.0, abs=1e-9)


def test_bt_recovers_simulated_strengths():
    true = {"m0": 1000.0, "m1": 1080.0, "m2": 1150.0, "m3": 1300.0, "m4": 1420.0}
    names = list(true)
    rng = np.random.default_rng(0)
    n = 20000
    i = rng.integers(0, 5, n)
    j = (i + rng.integers(1, 5, n)) % 5  # j != i
    r = np.array([true[m] for m in names])
    p = 1 / (1 + 10 ** (-(r[i] - r[j]) / 400))
    win = rng.random(n) < p
    battles = pd.DataFrame(
        {
            "model_a": np.array(names)[i],
            "model_b": np.array(names)[j],
            "winner": np.where(win, "model_a", "model_b"),
        }
    )
    table = bt_ratings(battles, baseline="m0", n_bootstrap=40, seed=1)
    assert list(table.index) == ["m4", "m3", "m2", "m1", "m0"]
    for m in names:
        # Each model has ~8000 battles: SE of a rating difference is ~6 Elo.
        assert table.loc[m, "rating"] == pytest.approx(true[m], abs=20)
        assert table.loc[m, "ci_low"] <= table.loc[m, "rating"] <= table.loc[m, "ci_high"]
    assert table.loc["m4", "win_rate_vs_baseline"] == pytest.approx(1 / (1 + 10 ** (-420 / 400)), abs=0.02)
    again = bt_ratings(battles, baseline="m0", n_bootstrap=40, seed=1)
    pd.testing.assert_frame_equal(table, again)


def test_bt_undefeated_model_stays_finite_with_default_l2():
    battles = pd.DataFrame({"model_a": ["a", "a", "b"], "model_b": ["b", "c", "c"], "winner": ["model_a"] * 3})
    table = bt_ratings(battles, n_bootstrap=5)
    assert np.isfinite(table["rating"]).all()
    assert list(table.index) == ["a", "b", "c"]


def test_predicted_win_rate_from_mapping():
    # 400 points on the default scale: 1 / (1 + 10^-1) = 10 / 11.
    assert predicted_win_rate({"a": 1400.0, "b": 1000.0}, "a", "b") == pytest.approx(10 / 11)
    assert predicted_win_rate(pd.Series({"a": 1.0, "b": 0.0}), "a", "b", scale=1.0, base=math.e) == (
        pytest.approx(expit(1.0))
    )


# ---------------------------------------------------------------------------------------------------
# agreement, kappa
# ---------------------------------------------------------------------------------------------------


def test_agreement_hand_example():
    x = [1, 1, 0, 0.5, 0.5, 0.8, 0.2, np.nan]
    y = [1, 0, 0, 0.5, 1, 0.6, 0.5, 1]
    # Last pair dropped (x unlabeled). Verdicts x: W W L T T W L, y: W L L T W W T.
    # Same verdict at pairs 1, 3, 4, 6 -> 4/7. Pairs without a tie on either side: 1, 2, 3, 6, of which
    # 1, 3, 6 agree -> 3/4.
    # Kappa: x and y both have marginals W 3, T 2, L 2; p_e = (9 + 4 + 4) / 49 = 17/49, p_o = 28/49,
    # kappa = (28 - 17) / (49 - 17) = 11/32.
    out = agreement(x, y)
    assert out["n"] == 7 and out["n_without_ties"] == 4
    assert out["agreement_with_ties"] == pytest.approx(4 / 7)
    assert out["agreement_without_ties"] == pytest.approx(3 / 4)
    assert out["kappa"] == pytest.approx(11 / 32)


def test_cohen_kappa_matches_sklearn_on_random_labels():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for k, n in [(2, 50), (3, 200), (5, 31)]:
        a = rng.integers(0, k, n)
        b = np.where(rng.random(n) < 0.5, a, rng.integers(0, k, n))
        assert cohen_kappa(a, b) == pytest.approx(metrics.cohen_kappa_score(a, b), abs=1e-12)
    a = rng.choice(["win", "tie", "loss"], 100)
    b = rng.choice(["win", "tie", "loss"], 100)
    assert cohen_kappa(a, b) == pytest.approx(metrics.cohen_kappa_score(a, b), abs=1e-12)


def test_cohen_kappa_guard_when_chance_agreement_is_one():
    assert math.isnan(cohen_kappa([1, 1, 1], [1, 1, 1]))
    assert cohen_kappa([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)


def test_agreement_matrix_uses_only_rows_labeled_by_both():
    table = pd.DataFrame(
        {
            "human": [1, 0, 0.5, 1, np.nan, 0],
            "judge": [1, 1, 0.5, np.nan, 1, 0],
            "rm": [0.9, 0.1, 0.7, 0.8, 0.3, np.nan],
        }
    )
    out = agreement_matrix(table)
    assert set(out) == {
        "agreement_with_ties",
        "agreement_without_ties",
        "kappa",
        "counts",
        "counts_without_ties",
    }
    # human & judge both labeled rows 0, 1, 2, 5: verdicts W L T L vs W W T L -> 3/4 with ties; without
    # ties rows 0, 1, 5 -> 2/3.
    assert out["counts"].loc["human", "judge"] == 4
    assert out["agreement_with_ties"].loc["human", "judge"] == pytest.approx(3 / 4)
    assert out["agreement_without_ties"].loc["judge", "human"] == pytest.approx(2 / 3)
    for name, frame in out.items():
        np.testing.assert_array_equal(frame.to_numpy(), frame.to_numpy().T, err_msg=name)
    assert out["counts"].loc["rm", "rm"] == 5
    assert (np.diag(out["agreement_with_ties"].to_numpy()) == 1.0).all()
    direct = agreement(table["judge"], table["rm"])
    assert out["kappa"].loc["judge", "rm"] == pytest.approx(direct["kappa"])


# ---------------------------------------------------------------------------------------------------
# position_consistency, longer_response_win_rate
# ---------------------------------------------------------------------------------------------------


def test_position_consistency_hand_example():
    ab = [1, 1, 0, 0.5, 1, 0]
    ba = [0, 1, 1, 0.5, 0.5, 0.5]
    # First-slot verdicts ab: + + - 0 + -, ba: - + + 0 0 0; sums 0, 2, 0, 0, 1, -1.
    # Consistent (sum 0): pairs 1, 3, 4 -> 1/2; toward first: 2, 5 -> 1/3; toward second: 6 -> 1/6.
    # first_position_rate = (mean(ab) + mean(ba)) / 2 = (3.5/6 + 3.5/6) / 2 = 7/12.
    out = position_consistency(ab, ba)
    assert out["n"] == 6
    assert out["consistency"] == pytest.approx(1 / 2)
    assert out["biased_first"] == pytest.approx(1 / 3)
    assert out["biased_second"] == pytest.approx(1 / 6)
    assert out["first_position_rate"] == pytest.approx(7 / 12)


def test_longer_response_win_rate_hand_example():
    # Pair 4 has equal lengths (dropped). Longer wins: pair 1 (a longer, a won) 1; pair 2 (a longer,
    # b won) 0; pair 3 (a longer, tie) 0.5; pair 5 (b longer, b won) 1 -> 2.5 / 4 = 0.625.
    out = longer_response_win_rate([1, 0, 0.5, 1, 0], [10, 10, 20, 5, 7], [5, 5, 10, 5, 9])
    assert out == pytest.approx(0.625)
    assert math.isnan(longer_response_win_rate([1.0], [3], [3]))


# ---------------------------------------------------------------------------------------------------
# accuracy_by_subset
# ---------------------------------------------------------------------------------------------------


def test_accuracy_by_subset_weights_sections_by_example_count():
    preds = [0.9, 0.2, 0.7] + [0.5, 0.9] + [0.6] * 5
    labels = [1, 0, 0] + [1, 0.5] + [1, 1, 1, 0, 0]
    subsets = ["chat"] * 3 + ["hard"] * 2 + ["safety"] * 5
    out = accuracy_by_subset(preds, labels, subsets, sections={"Chat": ["chat", "hard"], "Safety": ["safety"]})
    # chat: correct, correct, wrong -> 2/3 (n 3). hard: pred 0.5 counts 1/2; the tie label is excluded
    # -> 0.5 (n 1). safety: 3/5 (n 5).
    assert out.subsets.loc["chat", "accuracy"] == pytest.approx(2 / 3)
    assert out.subsets.loc["hard", "n"] == 1 and out.subsets.loc["hard", "accuracy"] == pytest.approx(0.5)
    assert out.subsets.loc["safety", "accuracy"] == pytest.approx(3 / 5)
    # Chat section weights by count: (3 * 2/3 + 1 * 0.5) / 4 = 0.625 (the unweighted mean would be 7/12).
    assert out.sections.loc["Chat", "accuracy"] == pytest.approx(0.625)
    assert out.sections.loc["Chat", "n"] == 4
    assert out.sections.loc["Safety", "accuracy"] == pytest.approx(0.6)
    # Overall pooled over the 9 non-tie examples: (2 + 0.5 + 3) / 9.
    assert out.overall == pytest.approx(5.5 / 9) and out.n == 9
    assert out.section_mean == pytest.approx((0.625 + 0.6) / 2)
    with pytest.raises(DataError):
        accuracy_by_subset(preds, labels, subsets, sections={"Chat": ["chatt"]})
