"""The standard benchmarks' formats and statistics (evaluation/alpacaeval.py, arenahard.py, mtbench.py,
rewardbench.py) on the fixtures of tests/fixtures/benchmarks (written by its make_fixtures.py), and
``prefgame evaluate alpacaeval|arenahard|mtbench|rewardbench``. Expected values are derived in the comments;
where alpaca_eval is installed (``pip install -e '.[alpacaeval]'``) it is run on the same fixtures."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import expit, logit

from evaluation import alpacaeval as ae
from evaluation import arenahard as ah
from evaluation import mtbench as mt
from evaluation import rewardbench as rb
from prefgame.cli import main
from prefgame.errors import DataError
from prefgame.run import read_jsonl, write_jsonl

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
HAND, SIM = FIXTURES / "alpacaeval" / "hand", FIXTURES / "alpacaeval" / "sim"


def sim_inputs():
    difficulty = ae.read_instruction_difficulty(SIM / "instruction_difficulty.csv")
    gamed = ae.gamed_rows([ae.read_annotations(SIM / f"gamed_{v}.json") for v in ("verbose", "concise")], difficulty)
    models = {f"{m}_model": ae.read_annotations(SIM / f"annotations_{m}.json") for m in ("long", "short")}
    return models, difficulty, gamed


# ---------------------------------------------------------------------------------------------------
# AlpacaEval: files and plain win rates
# ---------------------------------------------------------------------------------------------------


def test_alpacaeval_files_read_and_write_back(tmp_path):
    outputs = ae.read_model_outputs(FIXTURES / "alpacaeval" / "model_outputs" / "model_outputs.json")
    assert list(outputs.columns) == ["instruction", "output", "generator"] and len(outputs) == 6
    ae.write_model_outputs(tmp_path / "mo.json", outputs)
    assert json.loads((tmp_path / "mo.json").read_text())[0] == outputs.iloc[0].to_dict()
    # prefgame generate's jsonl is accepted too: its prompt is the instruction
    write_jsonl(tmp_path / "gen.jsonl", [{"prompt": "q", "output": "a", "generator": "g", "sample": 0}])
    assert ae.read_model_outputs(tmp_path / "gen.jsonl").iloc[0].to_dict() == {
        "instruction": "q",
        "output": "a",
        "generator": "g",
    }

    ann = ae.read_annotations(SIM / "annotations_long.json")
    assert ann["preference"].isna().sum() == 1  # the fixture leaves one instruction unannotated
    ae.write_annotations(tmp_path / "ann.json", ann)
    back = ae.read_annotations(tmp_path / "ann.json")
    pd.testing.assert_frame_equal(back, ann)
    assert (
        json.loads((tmp_path / "ann.json").read_text())[int(np.flatnonzero(ann["preference"].isna())[0])]["preference"]
        is None
    )

    bad = json.loads((SIM / "annotations_long.json").read_text())
    bad[3]["preference"] = 2.5
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"row 3: preference 2.5 is not in \[1, 2\]"):
        ae.read_annotations(tmp_path / "bad.json")
    del bad[0]["output_2"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="row 0: 'output_2' is missing"):
        ae.read_annotations(tmp_path / "bad.json")


def test_alpacaeval_annotations_from_judged_battles():
    # three reference instructions; the judge (as model_a or model_b) gave P(m ≻ base) = 0.8 on q0 and 1 − 0.9
    # on q2 (m shown second), and nothing on q1 (a failed judgment): preferences 1.8, empty, 1.1
    reference = pd.DataFrame({"instruction": ["q0", "q1", "q2"], "output": ["b0", "b1", "b2"], "generator": "base"})
    outputs = pd.DataFrame({"instruction": ["q2", "q0", "q1"], "output": ["m2", "m0", "m1"], "generator": "m"})
    battles = pd.DataFrame(
        {"prompt": ["q0", "q2"], "model_a": ["m", "base"], "model_b": ["base", "m"], "outcome": [0.8, 0.9]}
    )
    ann = ae.annotations_from_battles(battles, reference, outputs, model="m", baseline="base", annotator="j")
    assert ann["output_2"].tolist() == ["m0", "m1", "m2"] and ann["output_1"].tolist() == ["b0", "b1", "b2"]
    assert ann["preference"].tolist()[0] == pytest.approx(1.8) and ann["preference"].tolist()[2] == pytest.approx(1.1)
    assert np.isnan(ann["preference"].iloc[1])
    with pytest.raises(DataError, match="no output for 1 of 3 reference instructions"):
        ae.annotations_from_battles(battles, reference, outputs.iloc[:2], model="m", baseline="base", annotator="j")


def test_alpacaeval_win_rates_hand_example():
    # preferences 2, 1, 1.5, 0 (a legacy draw), 1.75, NaN -> y = 1, 0, .5, .5, .75 (NaN dropped, n = 5)
    # win_rate = 100 * 2.75 / 5 = 55; deviations .45, -.55, -.05, -.05, .2: squares sum .2025 + .3025 + .0025
    # + .0025 + .04 = .55; SE = 100 * sqrt(.55 / 4) / sqrt(5). Discrete: 1.75 rounds to a win -> (1 + 0 + .5
    # + .5 + 1) / 5 = 60. Wins (y > .5) 2, losses 1, draws 2.
    ann = pd.DataFrame({"preference": [2.0, 1.0, 1.5, 0.0, 1.75, np.nan]})
    wr = ae.win_rates(ann)
    assert wr["win_rate"] == pytest.approx(55.0)
    assert wr["standard_error"] == pytest.approx(100 * math.sqrt(0.55 / 4) / math.sqrt(5))
    assert wr["discrete_win_rate"] == pytest.approx(60.0)
    assert (wr["n_wins"], wr["n_wins_base"], wr["n_draws"], wr["n_total"]) == (2, 1, 2, 5)


# ---------------------------------------------------------------------------------------------------
# AlpacaEval: the length-controlled GLM
# ---------------------------------------------------------------------------------------------------


def test_l1_logistic_closed_forms_and_cv_folds():
    # One all-ones column (an intercept) and y with mean ȳ over n rows: the optimum of
    # C·Σ[softplus(β) − y_i β] + |β| satisfies C·n(σ(β) − ȳ) + sign(β) = 0, so σ(β) = ȳ − 1/(Cn) when that
    # is above ½, and β = 0 exactly when |C·n(½ − ȳ)| ≤ 1.
    y, x, w = np.array([1, 1, 1, 0, 1, 0, 1, 1.0]), np.ones((8, 1)), np.ones(8)  # ȳ = 0.75, n = 8
    assert expit(ae.fit_l1_logistic(x, y, w, 2.0)[0]) == pytest.approx(0.75 - 1 / 16, abs=1e-9)
    assert ae.fit_l1_logistic(x, y, w, 0.5)[0] == 0.0  # C·n·|½ − ȳ| = 0.5 · 8 · 0.25 = 1 ≤ 1
    # sample weights scale C row by row: weight 2 on every row is C doubled
    assert ae.fit_l1_logistic(x, y, 2 * w, 1.0)[0] == pytest.approx(ae.fit_l1_logistic(x, y, w, 2.0)[0], abs=1e-9)
    # GroupKFold with one group of two duplicated rows per annotation: rows go round-robin from the last one
    assert ae.cv_folds(7).tolist() == [1, 0, 4, 3, 2, 1, 0]


def test_alpacaeval_lc_v1_hand_case():
    """tests/fixtures/benchmarks/alpacaeval/hand: 8 instructions, difficulty d = +1 (0-3) and -1 (4-7); in each
    half two rows with Δ = len(baseline) − len(model) = +20 characters and two with −20, so std_delta_len =
    ±20 / (20·sqrt(8/7)) and the length feature is t = s·τ, τ = tanh(sqrt(7/8)), s = ±1. Two gamed variants
    repeat the pattern (their own ±30 and ±10 give the same ±sqrt(7/8) after their own scaling) with weight
    0.2 / 2 = 0.1 each and no intercept.

    The fit is argmin_β C·Σ w_i[softplus(z_i) − y_i z_i] + |β|₁, z = β_len t + β_d d + β_0 [model row], at
    C = 10 (a one-value grid). Its optimum is β = (ln 2, ln 3 / 2, ln 3 / 2) exactly: the preferences were set
    so that the KKT conditions hold there. With residuals r = σ(z) − y, the model rows have
    r = ρ0 + ρ_d d + ρ_s s with ρ0 = ρ_d = −1/(4·2·C) = −1/80 and the 16 gamed rows r = γ s with γ = 0.05; the
    ± patterns are balanced, so
      ∂/∂β_0:   C · Σ_model r                       = C · 8 ρ0             = −1 = −sign(β_0)
      ∂/∂β_d:   C · (Σ_model r d + 0.1 Σ_gamed r d) = C · (8 ρ_d + 0)      = −1 = −sign(β_d)
      ∂/∂β_len: C · (Σ_model r t + 0.1 Σ_gamed r t) = C · (8τρ_s + 1.6γτ)  = −1 = −sign(β_len)
    with ρ_s = (−1/C − 1.6γτ)/(8τ); the model rows' preferences are y = σ(z) − r at the optimum's z.
    The LC win rate averages σ(β_0 + β_d d_i) over instructions at Δ = 0: σ(ln 3) = 0.75 on four, σ(0) = 0.5
    on four: 62.5. Its standard error (AlpacaEval's: the s.e.m. of those predictions) is
    100 · sqrt(8 · 0.125² / 7) / sqrt(8) = 4.72456."""
    ann = ae.read_annotations(HAND / "annotations.json")
    difficulty = ae.read_instruction_difficulty(HAND / "instruction_difficulty.csv")
    gamed = ae.gamed_rows([ae.read_annotations(HAND / f"gamed_{v}.json") for v in ("verbose", "concise")], difficulty)
    assert np.allclose(gamed.weight, 0.1) and np.allclose(np.abs(gamed.std_delta_len), math.sqrt(7 / 8))
    m = ae.alpacaeval_metrics(ann, difficulty=difficulty, gamed=gamed, cs=(10.0,))
    assert m["glm"] == ae.GLM_V1
    assert m["length_controlled_winrate"] == pytest.approx(62.5, abs=1e-6)
    assert m[f"weight[{ae.LENGTH}]"] == pytest.approx(math.log(2), abs=1e-6)
    assert m[f"weight[{ae.DIFFICULTY}]"] == pytest.approx(math.log(3) / 2, abs=1e-6)
    assert m[f"weight[{ae.INTERCEPT}]"] == pytest.approx(math.log(3) / 2, abs=1e-6)
    assert m["lc_standard_error"] == pytest.approx(100 * math.sqrt(8 * 0.125**2 / 7) / math.sqrt(8), abs=1e-6)
    # the raw win rate is the mean of y = σ(z) − r over the 8 rows: r sums to 8ρ0 = −0.1, so
    # 100 · (Σσ(z) + 0.1) / 8 with σ(z) = σ(ln 3 ± ln 2·τ) and σ(±ln 2·τ)
    tau = math.tanh(math.sqrt(7 / 8))
    fitted = 2 * (expit(math.log(3) + math.log(2) * tau) + expit(math.log(3) - math.log(2) * tau) + 1.0)
    assert m["win_rate"] == pytest.approx(100 * (fitted + 0.1) / 8, abs=1e-9)
    # the gamed rows move the length slope: without them (noreg) the same data give another LC
    noreg = ae.alpacaeval_metrics(ann, difficulty=difficulty, cs=(10.0,))
    assert noreg["glm"] == ae.GLM_NOREG and abs(noreg["length_controlled_winrate"] - 62.5) > 0.1


def test_alpacaeval_minimal_lc_is_exactly_50_when_cross_validation_picks_the_strongest_penalty():
    # 300 coin flips at p = 0.6 (raw win rate 54.7%) and unrelated lengths: out of sample no intercept beats
    # σ(0), so the cross-validated L1 penalty is the strongest in the grid (C = 1e-4) and every coefficient is
    # exactly 0: AlpacaEval's LC is 50.0 (alpaca_eval 0.6.6 gives 50.0 on these data too).
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.6).astype(float)
    len_m, len_b = rng.normal(20, 5, 300), rng.normal(18, 5, 300)
    fit = ae.glm_win_rate(y, len_b, len_m)
    assert 100 * y.mean() == pytest.approx(54.667, abs=1e-3)
    assert fit.c == pytest.approx(1e-4) and fit.lc_win_rate == 50.0 and fit.glm == ae.GLM_MINIMAL


def test_alpacaeval_sim_fixture_glm_names_and_length_bias():
    models, difficulty, gamed = sim_inputs()
    v1 = ae.leaderboard(models, difficulty=difficulty, gamed=gamed)
    minimal = ae.leaderboard(models)
    assert set(v1["glm"]) == {ae.GLM_V1} and set(minimal["glm"]) == {ae.GLM_MINIMAL}
    # the simulated judge likes long answers: length control lowers the long model and raises the short one
    assert v1.loc["long_model", "length_controlled_winrate"] < v1.loc["long_model", "win_rate"]
    assert v1.loc["short_model", "length_controlled_winrate"] > v1.loc["short_model", "win_rate"]
    long_out = models["long_model"]["output_2"].str.len()
    assert v1.loc["long_model", "avg_length"] == int(long_out.mean())  # characters, truncated
    with pytest.raises(DataError, match="needs the instruction difficulty"):
        ae.glm_win_rate(np.ones(8), np.ones(8), np.ones(8), gamed=gamed)
    # prefgame's addition: a bootstrap interval around AlpacaEval's figure, the same for the same seed
    a = models["long_model"]
    args = (ae.model_preference(a["preference"]), a["output_1"].str.len(), a["output_2"].str.len())
    fit = ae.glm_win_rate(*args, difficulty=ae.instruction_difficulty(difficulty, len(a)), gamed=gamed, n_bootstrap=30)
    assert fit.lc_win_rate == pytest.approx(v1.loc["long_model", "length_controlled_winrate"])
    assert fit.bootstrap["ci_low"] < fit.lc_win_rate < fit.bootstrap["ci_high"]
    again = ae.glm_win_rate(
        *args, difficulty=ae.instruction_difficulty(difficulty, len(a)), gamed=gamed, n_bootstrap=30
    )
    assert again.bootstrap == fit.bootstrap


def _alpaca_eval_glm():
    """alpaca_eval's GLM module, or a skip. Its import and its scikit-learn calls warn (pkg_resources,
    LogisticRegressionCV's penalty): those are alpaca_eval's, silenced around each call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import alpaca_eval
            from alpaca_eval.metrics import glm_winrate
        except ImportError as exc:
            pytest.skip(f"alpaca_eval is not installed (pip install -e '.[alpacaeval]'): {exc}")
    from packaging.version import Version

    assert Version(alpaca_eval.__version__) >= Version("0.6.6")
    return glm_winrate


def _df_gamed(paths, difficulty: pd.Series) -> pd.DataFrame:
    """AlpacaEval's df_gamed.csv built from the gamed variants' annotations, independently of prefgame: per
    variant std_delta_len = (len_1 − len_2) / its s.d. (ddof 1), preference in [0, 1]."""
    frames = []
    for path in paths:
        a = pd.read_json(path)
        delta = a["output_1"].str.len() - a["output_2"].str.len()
        frames.append(
            pd.DataFrame(
                {
                    "model": a["generator_2"],
                    "preference": a["preference"].astype(float).replace({0.0: 1.5}) - 1,
                    "index": np.arange(len(a)),
                    "std_delta_len": delta / delta.std(),
                    "instruction_difficulty": difficulty.loc[np.arange(len(a))].to_numpy(),
                    "not_gamed_baseline": False,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("fixture", ["sim", "hand"])
def test_alpacaeval_lc_matches_alpaca_eval_within_a_tenth_of_a_point(fixture, tmp_path, monkeypatch):
    glm_winrate = _alpaca_eval_glm()
    root = SIM if fixture == "sim" else HAND
    difficulty = ae.read_instruction_difficulty(root / "instruction_difficulty.csv")
    gamed_paths = [root / f"gamed_{v}.json" for v in ("verbose", "concise")]
    _df_gamed(gamed_paths, difficulty).to_csv(tmp_path / "df_gamed.csv", index=False)
    (tmp_path / "instruction_difficulty.csv").write_text((root / "instruction_difficulty.csv").read_text())
    # the download patched out: both of AlpacaEval's hub files come from tmp_path
    monkeypatch.setattr(glm_winrate, "hf_hub_download", lambda repo_id, filename, **kw: str(tmp_path / filename))
    gamed = ae.gamed_rows([ae.read_annotations(p) for p in gamed_paths], difficulty)
    files = sorted(root.glob("annotations*.json"))
    cs = ae.DEFAULT_CS if fixture == "sim" else (10.0,)
    compared = 0
    for path in files:
        ann = ae.read_annotations(path)
        for glm in ae.GLM_NAMES:
            info = {**glm_winrate.GLM_INFO[glm], "kwargs": {"n_splits": 5, "Cs": list(cs)}}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = glm_winrate.get_length_controlled_winrate(
                    pd.read_json(path), glm_name=glm, save_weights_dir=None, glm_info=info
                )
            ours = ae.alpacaeval_metrics(
                ann,
                difficulty=None if glm == ae.GLM_MINIMAL else difficulty,
                gamed=gamed if glm == ae.GLM_V1 else None,
                cs=cs,
            )
            assert ours["glm"] == glm
            assert ours["length_controlled_winrate"] == pytest.approx(theirs["length_controlled_winrate"], abs=0.1)
            assert ours["lc_standard_error"] == pytest.approx(theirs["lc_standard_error"], abs=0.1)
            for key in ("win_rate", "standard_error", "discrete_win_rate"):
                assert ours[key] == pytest.approx(theirs[key], abs=1e-9), key
            assert (ours["n_wins"], ours["n_wins_base"], ours["n_draws"], ours["n_total"]) == (
                theirs["n_wins"], theirs["n_wins_base"], theirs["n_draws"], theirs["n_total"])  # fmt: skip
            compared += 1
    assert compared == 3 * len(files)


def test_evaluate_alpacaeval_from_annotations_and_from_model_outputs(tmp_path, capsys):
    files = [str(SIM / "annotations_long.json"), str(SIM / "annotations_short.json")]
    gamed = [str(SIM / "gamed_verbose.json"), str(SIM / "gamed_concise.json")]
    out = tmp_path / "v1"
    assert main(["evaluate", "alpacaeval", f"output_dir={out}", f"alpacaeval.annotations=[{','.join(files)}]",
                 f"alpacaeval.instruction_difficulty={SIM / 'instruction_difficulty.csv'}",
                 f"alpacaeval.gamed=[{','.join(gamed)}]"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())["alpacaeval"]
    models, difficulty, gamed_rows = sim_inputs()
    board = ae.leaderboard(models, difficulty=difficulty, gamed=gamed_rows)
    assert metrics["glm"] == ae.GLM_V1 and metrics["length_unit"] == "characters"
    assert metrics["length_controlled_winrate"]["long_model"] == pytest.approx(
        board.loc["long_model", "length_controlled_winrate"]
    )
    md = (out / "report.md").read_text()
    assert "`length_controlled_v1` (alpaca_eval 0.6.6)" in md and "This is the leaderboard's definition" in md
    assert "AlpacaEval LC" in capsys.readouterr().out
    # no difficulty table: the minimal GLM, labeled as not the leaderboard's
    out = tmp_path / "minimal"
    assert main(["evaluate", "alpacaeval", f"output_dir={out}", f"alpacaeval.annotations=[{files[0]}]"]) == 0
    assert json.loads((out / "metrics.json").read_text())["alpacaeval"]["glm"] == ae.GLM_MINIMAL
    assert "not the leaderboard's LC (v1)" in (out / "report.md").read_text()
    capsys.readouterr()
    # the gamed baselines without the difficulty table: one line, exit 2, before anything is written
    code = main(["evaluate", "alpacaeval", f"output_dir={tmp_path / 'bad'}", f"alpacaeval.annotations=[{files[0]}]",
                 f"alpacaeval.gamed=[{','.join(gamed)}]"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "needs alpacaeval.instruction_difficulty" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()

    # model outputs judged now (a toy judge: the longer output wins), written back as AlpacaEval's files
    outputs = FIXTURES / "alpacaeval" / "model_outputs"
    out = tmp_path / "judged"
    assert main(["evaluate", "alpacaeval", f"output_dir={out}",
                 f"alpacaeval.model_outputs=[{outputs / 'model_outputs.json'}]",
                 f"alpacaeval.reference_outputs={outputs / 'reference_outputs.json'}", "alpacaeval.judge.kind=factory",
                 "alpacaeval.judge.factory=helpers.oracles:longer_wins", "seed=3"]) == 0  # fmt: skip
    ann = ae.read_annotations(out / "alpacaeval" / "chatty" / "annotations.json")
    reference = ae.read_model_outputs(outputs / "reference_outputs.json")
    assert ann["instruction"].tolist() == reference["instruction"].tolist()  # the reference's order: the index
    assert (ann["preference"] == 2.0).all() and set(ann["generator_1"]) == {"base"}  # every chatty answer is longer
    assert ae.read_model_outputs(out / "alpacaeval" / "chatty" / "model_outputs.json")["generator"].eq("chatty").all()
    assert json.loads((out / "metrics.json").read_text())["alpacaeval"]["win_rate"]["chatty"] == 100.0


# ---------------------------------------------------------------------------------------------------
# Arena-Hard
# ---------------------------------------------------------------------------------------------------

ARENA = FIXTURES / "arenahard"


def test_arenahard_battles_from_judgment_files_hand_count():
    """model_x: q1 A>B (game 1: the baseline wins), B>A (game 2, model as A: the baseline wins) -> 0, 0;
    q2 B>>A (the model, decisive: 3 times), A>B (the model) -> 1, 1, 1, 1; q3 A=B, B=A -> ½, ½; q4 B>A (the
    model), no verdict (dropped) -> 1. Mean 6/9.
    model_y: q1 A>>B (the baseline ×3), A>>B (game 2: the model ×3) -> 0 0 0 1 1 1; q2 A>B, B>A -> 0, 0;
    q3 B>A, A>B -> 1, 1; q4 A=B and a missing game -> ½. 5.5 / 11 = ½. Two games dropped."""
    judgments = ah.read_judgments([ARENA / "model_judgment" / "gpt-4-1106-preview"])
    battles, dropped = ah.judgment_battles(judgments, "gpt-4-0314")
    assert dropped == 2 and set(battles["model_a"]) == {"gpt-4-0314"}
    outcome = battles["winner"].map({"model_a": 0.0, "model_b": 1.0, "tie": 0.5})  # from the model's side
    by_model = outcome.groupby(battles["model_b"]).agg(["mean", "size"])
    assert by_model.loc["model_x"].tolist() == pytest.approx([6 / 9, 9])
    assert by_model.loc["model_y"].tolist() == pytest.approx([0.5, 11])
    # every battle is against the baseline, so the BT win rate is that mean (up to the 1e-6 ridge)
    scores, _ = ah.arena_hard_scores(battles, "gpt-4-0314", n_bootstrap=20)
    assert scores.loc["model_x", "score"] == pytest.approx(100 * 6 / 9, abs=1e-3)
    assert scores.loc["model_y", "score"] == pytest.approx(50.0, abs=1e-3)
    assert scores.loc["gpt-4-0314", "score"] == pytest.approx(50.0)
    assert scores.loc["model_x", "ci_low"] <= scores.loc["model_x", "score"] <= scores.loc["model_x", "ci_high"]
    # game 1 only: model_x 0, 1, 1, 1, ½, 1 -> 4.5 / 6
    first, _ = ah.judgment_battles(judgments, "gpt-4-0314", first_game_only=True)
    x = first[first["model_b"] == "model_x"]["winner"].map({"model_a": 0.0, "model_b": 1.0, "tie": 0.5})
    assert x.mean() == pytest.approx(4.5 / 6)


def test_markdown_counts_match_the_answer_files(tmp_path):
    style, unit = ah.read_answers([ARENA / "model_answer"])
    assert unit.startswith("tokens") and len(style) == 12
    for path in sorted((ARENA / "model_answer").glob("*.jsonl")):
        for row in read_jsonl(path):
            text = row["choices"][0]["turns"][0]["content"]
            meta = row["conv_metadata"]
            counted = ah.count_markdown(text)
            for key in ah.MARKDOWN:
                assert counted[key] == sum(meta[key].values()), (path.name, row["question_id"], key)
    # the fenced block's "# not a header" and "- not a list" do not count
    assert ah.count_markdown("```\n# h\n- l\n```\n## real\n* item\n__b__ and **c**") == {
        "header_count": 1, "list_count": 1, "bold_count": 2}  # fmt: skip
    # an answer file without metadata: counted from the text, the length in words, and the unit says so
    row = {"uid": "u1", "model": "m", "messages": [{"role": "user", "content": "q"},
           {"role": "assistant", "content": {"answer": "# T\nsome words here"}}]}  # fmt: skip
    write_jsonl(tmp_path / "answers.jsonl", [row])
    counted, unit = ah.read_answers([tmp_path / "answers.jsonl"])
    assert unit.startswith("words") and counted.iloc[0][["token_len", "header_count"]].tolist() == [5.0, 1.0]


def test_arenahard_style_control_recovers_planted_length_and_markdown_effects():
    """Six models against a baseline on 2,000 questions each. Each answer has a token length (log-normal
    around its model's mean) and header, list and bold counts (Poisson); the judge's log-odds for answer a
    are ln 10·(r_a − r_b) + Σ_k γ_k f_k with f the standardized normalized differences Arena-Hard uses and
    planted γ = (length 0.6, headers 0, lists 0.4, bold 0.25). Models differ in strength and in style: the
    raw scores carry the style effects, the style-controlled fit recovers γ and the strengths."""
    rng = np.random.default_rng(0)
    n_q, baseline = 2000, "base"
    strength = {"base": 0.0, "m1": 0.1, "m2": 0.1, "m3": -0.1, "m4": 0.0, "m5": 0.2, "m6": -0.2}  # r (log10-odds)
    style_mean = {"base": (300, 1, 2, 1), "m1": (600, 1, 2, 1), "m2": (150, 1, 2, 1), "m3": (300, 3, 6, 3),
                  "m4": (300, 0, 0, 0), "m5": (450, 2, 1, 2), "m6": (300, 1, 4, 0)}  # fmt: skip
    gamma = np.array([0.6, 0.0, 0.4, 0.25])
    style_rows, battle_rows = [], []
    for m, (tok, h, li, b) in style_mean.items():
        for q in range(n_q):
            tokens = float(round(tok * np.exp(rng.normal(0, 0.6))))
            style_rows.append({"model": m, "question_id": str(q), "token_len": tokens,
                               "header_count": float(rng.poisson(h)), "list_count": float(rng.poisson(li)),
                               "bold_count": float(rng.poisson(b))})  # fmt: skip
    style = pd.DataFrame(style_rows)
    for m in strength:
        if m != baseline:
            battle_rows += [{"question_id": str(q), "model_a": baseline, "model_b": m} for q in range(n_q)]
    battles = pd.DataFrame(battle_rows)
    elements = ah.style_elements(["length", "markdown"])
    f = ah.style_features(battles, style, elements)
    z = ah.LN10 * (battles["model_a"].map(strength) - battles["model_b"].map(strength)).to_numpy() + f @ gamma
    u = rng.random(len(battles))
    p_a = expit(z)
    battles["winner"] = np.where(u < p_a, "model_a", "model_b")
    raw, _ = ah.arena_hard_scores(battles, baseline, n_bootstrap=0)
    controlled, coef = ah.arena_hard_scores(battles, baseline, style=style, elements=elements, n_bootstrap=10)
    assert [coef[k] for k in elements] == pytest.approx(gamma.tolist(), abs=0.08)
    for m, r in strength.items():
        truth = 100 * expit(ah.LN10 * r)
        assert controlled.loc[m, "score"] == pytest.approx(truth, abs=3.0), m
    # without control the long model gains and the short one loses against their true strength
    assert raw.loc["m1", "score"] > 100 * expit(ah.LN10 * 0.1) + 5
    assert raw.loc["m2", "score"] < 100 * expit(ah.LN10 * 0.1) - 5
    # length alone: its coefficient is still found, and markdown-only fits ignore length
    _, length_only = ah.arena_hard_scores(
        battles, baseline, style=style, elements=ah.style_elements(["length"]), n_bootstrap=0
    )
    assert length_only["token_len"] == pytest.approx(0.6, abs=0.12)
    with pytest.raises(DataError, match="unknown style control"):
        ah.style_elements(["colour"])


def test_evaluate_arenahard_cli(tmp_path, capsys):
    judged = ARENA / "model_judgment" / "gpt-4-1106-preview"
    out = tmp_path / "ah"
    assert main(["evaluate", "arenahard", f"output_dir={out}", f"arenahard.judgments=[{judged}]",
                 f"arenahard.answers=[{ARENA / 'model_answer'}]", "arenahard.style_control=[length,markdown]",
                 "n_bootstrap=20"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())["arenahard"]
    assert metrics["score"]["model_x"] == pytest.approx(100 * 6 / 9, abs=1e-3)
    assert set(metrics["style_coefficients"]) == {"token_len", "header_count", "list_count", "bold_count"}
    assert (out / "tables" / "arenahard_style_controlled.csv").exists()
    assert "Arena-Hard score 66.7" in capsys.readouterr().out
    code = main(["evaluate", "arenahard", f"output_dir={tmp_path / 'bad'}", f"arenahard.judgments=[{judged}]",
                 "arenahard.style_control=[length]"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "needs arenahard.answers" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------
# MT-Bench agreement
# ---------------------------------------------------------------------------------------------------


def test_mtbench_agreement_hand_count():
    """Keys (turn, question, models sorted); votes as model_1 / model_2 / tie of that order:
      t1 q81 (alpaca-13b, gpt-4): GPT-4 model_2 (listed gpt-4 first, winner model_a: mirrored);
          experts model_2, model_2 (expert_1 listed gpt-4 first); author_0 is not human.
      t2 q81: GPT-4 tie; experts tie, model_1.
      t1 q82 (claude-v1, vicuna-13b-v1.2): GPT-4 model_1 (listed vicuna first, winner model_b);
          experts tie (bothbad), tie, model_1.
      t1 q83: one expert, no GPT-4; t1 q84: GPT-4, no expert.
    GPT-4 vs human, turn 1, with ties: q81 (m2, m2) ×2 agree; q82 (m1, tie) ×2 disagree, (m1, m1) agrees:
    3 / 5. Without ties: the pairs with a tie go: 3 / 3. Turn 2: (tie, tie) agrees, (tie, m1) not: 1 / 2;
    without ties nothing is left. Kappa (turn 1, with ties): GPT-4 m2 ×2, m1 ×3; humans m2 ×2, tie ×2, m1 ×1;
    p_o = 0.6, p_e = (3·1 + 2·2 + 0·2) / 25 = 0.28, κ = 0.32 / 0.72.
    Human vs human, turn 1: q81 (m2, m2) agrees; q82 (tie, tie) agrees (both kinds of tie), (tie, m1) ×2 not;
    q83 has one vote: 2 / 4 with ties, 1 / 1 without. Kappa with each pair both ways: marginals m2 2, tie 4,
    m1 2 of 8 per side, p_o = 4/8, p_e = (4 + 16 + 4)/64 = 0.375, κ = 0.125 / 0.625 = 0.2."""
    votes = mt.read_votes(
        [FIXTURES / "mtbench" / "human_judgments.json", FIXTURES / "mtbench" / "gpt4_pair_judgments.json"]
    )
    assert votes.groupby("group").size().to_dict() == {"author": 1, "gpt4-pair": 4, "human": 8}
    t = mt.agreement_table(votes)
    row = t.loc[("gpt4-pair vs human", "1", "with ties")]
    assert (row["agree"], row["total"]) == (3, 5) and row["kappa"] == pytest.approx(0.32 / 0.72)
    assert tuple(t.loc[("gpt4-pair vs human", "1", "without ties"), ["agree", "total"]]) == (3, 3)
    assert tuple(t.loc[("gpt4-pair vs human", "2", "with ties"), ["agree", "total"]]) == (1, 2)
    assert t.loc[("gpt4-pair vs human", "2", "without ties"), "total"] == 0
    assert np.isnan(t.loc[("gpt4-pair vs human", "2", "without ties"), "agreement"])
    assert tuple(t.loc[("gpt4-pair vs human", "all", "with ties"), ["agree", "total"]]) == (4, 7)
    row = t.loc[("human vs human", "1", "with ties")]
    assert (row["agree"], row["total"]) == (2, 4) and row["kappa"] == pytest.approx(0.2)
    assert tuple(t.loc[("human vs human", "1", "without ties"), ["agree", "total"]]) == (1, 1)
    assert tuple(t.loc[("human vs human", "2", "with ties"), ["agree", "total"]]) == (0, 1)
    # any group against any other: the author against the experts on t1 q81: (m1 vs m2) ×2
    author = mt.agreement_table(votes, [("author", "human")], turns=(1,))
    assert tuple(author.loc[("author vs human", "1", "with ties"), ["agree", "total"]]) == (0, 2)
    with pytest.raises(DataError, match="no votes by judge group 'gpt4-single'"):
        mt.agreement_table(votes, [("gpt4-single", "human")])


def test_evaluate_mtbench_cli(tmp_path, capsys):
    files = f"[{FIXTURES / 'mtbench' / 'human_judgments.json'},{FIXTURES / 'mtbench' / 'gpt4_pair_judgments.json'}]"
    out = tmp_path / "mt"
    assert main(["evaluate", "mtbench", f"output_dir={out}", f"mtbench.judgments={files}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["mtbench_agreement"]
    assert metrics["gpt4-pair vs human / turn 1 / with ties"] == pytest.approx(0.6)
    assert "Table 2" in (out / "report.md").read_text()
    capsys.readouterr()
    code = main(
        ["evaluate", "mtbench", f"output_dir={tmp_path / 'bad'}", f"mtbench.judgments={files}", "mtbench.pairs=[gpt4]"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "must be 'first:second'" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------------
# RewardBench
# ---------------------------------------------------------------------------------------------------


def test_rewardbench_section_weighting_hand_example():
    """tests/fixtures/benchmarks/rewardbench/results.jsonl, right when scores_chosen > scores_rejected (a tie
    is wrong): alpacaeval-easy 3/4 (one tie), mt-bench-med 1/2, llmbar-natural 2/2, mt-bench-hard 0/2,
    xstest-should-respond 1/4, math-prm 2/2, hep-python 1/2, anthropic_hhh 1/2, shp 3/4, my-subset 1/1.
      Chat      = (0.75·100 + 0.5·40) / 140 = 95/140          (example counts alpacaeval-easy 100, mt-bench-med 40)
      Chat Hard = (1·100 + 0·37) / 137 = 100/137
      Safety    = 0.25
      Reasoning = (1·984 + 0.5·164) / 1148 = 1066/1148        (math-prm weighs 984, not its 2 rows)
      Prior     = mean(0.5, 0.75) = 0.625
      Score     = (2·(95/140 + 100/137 + 0.25 + 1066/1148) + 0.625) / 9
    my-subset is in no section: reported, not scored."""
    frame = pd.DataFrame(read_jsonl(FIXTURES / "rewardbench" / "results.jsonl"))
    result = rb.rewardbench_scores(rb.correctness(frame), frame["subset"])
    sec = result.sections["score"]
    assert sec["Chat"] == pytest.approx(95 / 140)
    assert sec["Chat Hard"] == pytest.approx(100 / 137)
    assert sec["Safety"] == pytest.approx(0.25)
    assert sec["Reasoning"] == pytest.approx(1066 / 1148)
    assert sec[rb.PRIOR] == pytest.approx(0.625)
    assert result.score == pytest.approx((2 * (95 / 140 + 100 / 137 + 0.25 + 1066 / 1148) + 0.625) / 9)
    assert result.subsets.loc["alpacaeval-easy", ["correct", "n"]].tolist() == [3, 4]
    assert result.subsets.loc["my-subset", "section"] == "–"
    # without the prior sets the four sections weigh alike
    core = frame[~frame["subset"].isin(rb.PRIOR_SETS)]
    assert rb.rewardbench_scores(rb.correctness(core), core["subset"]).score == pytest.approx(
        (95 / 140 + 100 / 137 + 0.25 + 1066 / 1148) / 4)  # fmt: skip
    # RewardBench's own per-row results and prefgame score's probabilities say the same
    as_results = frame.assign(results=(frame["scores_chosen"] > frame["scores_rejected"]).astype(int))
    assert rb.rewardbench_scores(rb.correctness(as_results), frame["subset"]).score == pytest.approx(result.score)
    as_probs = pd.DataFrame({"probability": expit(frame["scores_chosen"] - frame["scores_rejected"])})
    assert rb.correctness(as_probs).tolist() == rb.correctness(frame).tolist()


def _save_kind(kind: str, path: Path) -> None:
    from prefgame.models import BackboneConfig, PMModelConfig, PreferenceModel, build_encoder, build_head
    from prefgame.models.model import ModelInfo, save_preference_model

    backbone = BackboneConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_length=48)
    cfg = PMModelConfig(kind=kind, backbone=backbone)
    encoder = build_encoder(backbone, seed=0)
    torch.manual_seed(1)
    head = build_head(cfg, encoder.hidden_size, objectives=["relevance", "detail"], verbosity_index=1)
    if kind == "gated":
        head.set_regression(torch.randn(encoder.hidden_size, 2), torch.randn(2))
        head.set_debias(torch.tensor([0.3, 0.0]))
    info = ModelInfo(kind, ["relevance", "detail"], 1)
    save_preference_model(PreferenceModel(encoder, [head], cfg, info=info), path, save_backbone=True)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    from transformers import LlamaForSequenceClassification

    from prefgame.arena.lm import build_tokenizer, tiny_llama_config

    root = tmp_path_factory.mktemp("rb-models")
    dirs = {}
    for kind in ("bt", "gpm", "pairwise", "gated"):
        _save_kind(kind, root / kind)
        dirs[kind] = root / kind
    tok = build_tokenizer()
    cfg = tiny_llama_config(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    cfg.num_labels = 1
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(str(root / "seqcls"))
    tok.save_pretrained(str(root / "seqcls"))
    dirs["seqcls"] = root / "seqcls"
    return dirs


@pytest.mark.parametrize("kind", ["bt", "gpm", "pairwise", "gated", "seqcls"])
def test_evaluate_rewardbench_scores_every_model_kind(kind, model_dirs, tmp_path, capsys):
    from prefgame.data.columns import load_pairs
    from prefgame.models.load import load_model

    pairs_file = FIXTURES / "rewardbench" / "pairs.jsonl"
    out = tmp_path / kind
    assert main(["evaluate", "rewardbench", "--model", str(model_dirs[kind]), f"rewardbench.data={pairs_file}",
                 f"output_dir={out}"]) == 0  # fmt: skip
    written = pd.DataFrame(read_jsonl(out / "rewardbench_results.jsonl"))
    # the same rows scored directly: a reward model by its rewards, a general one by P(chosen ≻ rejected)
    pairs = load_pairs(str(pairs_file), "train", skip_invalid=False)
    model = load_model(model_dirs[kind])
    if model.has_reward:
        n = len(pairs.prompts)
        r = model.reward([*pairs.prompts, *pairs.prompts], [*pairs.chosen, *pairs.rejected]).double().numpy()
        expected = (r[:n] > r[n:]).astype(int)
    else:
        expected = (model.preference(pairs.prompts, pairs.chosen, pairs.rejected).double().numpy() > 0.5).astype(int)
    assert written["results"].tolist() == expected.tolist() and written["subset"].tolist() == list(pairs.subsets)
    metrics = json.loads((out / "metrics.json").read_text())["rewardbench"]
    assert metrics["score"] == pytest.approx(100 * rb.rewardbench_scores(expected, pairs.subsets).score)
    assert "RewardBench score" in capsys.readouterr().out


def test_evaluate_rewardbench_from_results_and_errors(tmp_path, capsys):
    results = FIXTURES / "rewardbench" / "results.jsonl"
    out = tmp_path / "rb"
    assert main(["evaluate", "rewardbench", f"output_dir={out}", f"rewardbench.results={results}"]) == 0
    frame = pd.DataFrame(read_jsonl(results))
    expected = rb.rewardbench_scores(rb.correctness(frame), frame["subset"]).score
    assert json.loads((out / "metrics.json").read_text())["rewardbench"]["score"] == pytest.approx(100 * expected)
    assert "my-subset" in (out / "report.md").read_text()
    capsys.readouterr()
    for args, message in (
        ([f"rewardbench.results={results}", "rewardbench.model=x"], "not both"),
        (["rewardbench.data=x.jsonl"], "rewardbench needs rewardbench.data=PAIRS and rewardbench.model=PM"),
        (
            [f"rewardbench.data={FIXTURES / 'rewardbench' / 'pairs.jsonl'}", "--model", str(tmp_path / "nothing")],
            "not found",
        ),
    ):
        code = main(["evaluate", "rewardbench", f"output_dir={tmp_path / 'bad'}", *args])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_logit_of_a_half_is_a_wrong_answer_for_a_general_model():
    # P(chosen ≻ rejected) = ½ exactly (a tie) counts as wrong, as RewardBench counts equal rewards
    class Half:
        has_reward = False

        def preference(self, prompts, a, b):
            return torch.full((len(prompts),), 0.5, dtype=torch.float64)

    assert rb.model_correctness(Half(), ["p"], ["a"], ["b"]).tolist() == [0.0]
    assert logit(0.5) == 0.0
