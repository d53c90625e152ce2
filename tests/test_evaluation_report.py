"""Reports of evaluation/: the bias regression, agreement and win-rate sections, the report writer,
the arena's planted biases, and ``prefgame evaluate``. Expected values are derived in the comments."""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import expit, logit

from evaluation.arena import BIASED_JUDGE, arena_evaluation, arena_label_table
from evaluation.bias import judge_bias
from evaluation.report import (
    agreement_section,
    label_sources,
    policy_battles,
    winrate_section,
    write_report,
)
from prefgame.arena.export import SYSTEMS, response_pairs
from prefgame.arena.world import Arena, compose_response
from prefgame.cli import main
from prefgame.errors import DataError
from prefgame.judges import PairJudgment
from prefgame.run import read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------
# judge_bias
# ---------------------------------------------------------------------------------------------------


def test_judge_bias_recovers_exact_coefficients_from_soft_labels():
    # With soft labels y = sigma(x w*) the cross-entropy with fractional targets is minimized exactly at
    # w* (its gradient sum (sigma(x w) - y) x vanishes there), so the fit returns w* to solver precision.
    rng = np.random.default_rng(0)
    n = 400
    ref = rng.uniform(0.05, 0.95, n)
    la, lb = rng.integers(10, 40, n).astype(float), rng.integers(10, 40, n).astype(float)
    d = la - lb
    s_ab = np.concatenate([d, -d]).std()  # both orders enter: the swapped rows have -d
    gamma, phi, alpha = 0.8, -0.5, 1.7
    y_ab = expit(gamma + alpha * logit(ref) + phi * d / s_ab)
    y_ba = expit(gamma + alpha * logit(1 - ref) - phi * d / s_ab)  # b shown first: r -> 1 - r, d -> -d
    out = judge_bias(y_ab, la, lb, reference=ref, labels_swapped=y_ba)
    assert out["position_logodds"] == pytest.approx(gamma, abs=1e-7)
    assert out["length_logodds"] == pytest.approx(phi, abs=1e-7)
    assert out["reference_coef"] == pytest.approx(alpha, abs=1e-7)
    assert out["length_std"] == pytest.approx(s_ab, rel=1e-12)
    assert (out["n_pairs"], out["n_rows"]) == (400, 800)
    # labels exactly on the model: every residual is 0, so the robust standard errors are 0
    assert out["position_se"] == pytest.approx(0.0, abs=1e-6)


def test_judge_bias_without_reference_is_the_first_slot_and_length_log_odds():
    # No reference, no length variation: the fit is intercept-only, sigma(gamma) = mean label (3/4),
    # gamma = log 3; phi is not identified (NaN).
    out = judge_bias([1, 1, 1, 0, 1, 0.5, 1, 0.5], [5] * 8, [5] * 8)
    assert out["position_logodds"] == pytest.approx(math.log(3), abs=1e-7)
    assert math.isnan(out["length_logodds"]) and math.isnan(out["reference_coef"])
    with pytest.raises(DataError):
        judge_bias([1, 0], [1, 2], [2, 1])


# ---------------------------------------------------------------------------------------------------
# Agreement section
# ---------------------------------------------------------------------------------------------------


def test_agreement_section_tables_and_model_accuracy_by_hand():
    labels = pd.DataFrame(
        {
            "prompt": ["p"] * 6,
            "subset": ["x", "x", "x", "y", "y", "y"],
            "human": [1, 0, 1, 0.5, 1, 0],
            "judge": [1, 1, 1, 0, 1, np.nan],
            "rm": [0.9, 0.2, 0.4, 0.7, 0.5, 0.1],
            "judge:swapped": [0, 0, 1, 1, 0, np.nan],
        }
    )
    assert label_sources(labels) == ["human", "judge", "rm"]
    section = agreement_section(labels, models=["rm"], reference="human")
    # human vs judge on rows 0-4: verdicts W L W T W vs W W W L W -> 3/5 with ties; without ties 3/4.
    assert section.tables["agreement_with_ties"].loc["human", "judge"] == pytest.approx(3 / 5)
    assert section.tables["agreement_without_ties"].loc["judge", "human"] == pytest.approx(3 / 4)
    assert section.tables["pair_counts"].loc["judge", "rm"] == 5
    judges = section.tables["judges"]
    # judge, both orders on rows 0-4: a-first W W W L W, b-first (first slot) L L W W L ->
    # consistent rows 0, 1, 3, 4 (4/5); row 2 favours the first slot.
    assert judges.loc["judge", "consistency"] == pytest.approx(4 / 5)
    assert judges.loc["judge", "biased_first"] == pytest.approx(1 / 5)
    assert judges.loc["judge", "tie_rate"] == 0.0 and judges.loc["human", "tie_rate"] == pytest.approx(1 / 6)
    assert judges.loc["human", "position_bias"] == "–"  # the reference itself
    acc = section.tables["model_accuracy"]
    # rm vs human, ties dropped (row 3): rows 0 ok, 1 ok, 2 wrong (0.4 vs win), 4 pred 0.5 -> 1/2, 5 ok
    # -> (1 + 1 + 0 + 0.5 + 1) / 5 = 0.7; per subset x: 2/3, y: (0.5 + 1) / 2 = 0.75.
    assert acc.loc[("rm", "human"), "accuracy"] == pytest.approx(0.7)
    assert acc.loc[("rm", "human"), "n"] == 5
    by_subset = section.tables["model_accuracy_by_subset"]
    assert list(by_subset.columns) == ["rm vs human"]
    assert by_subset.loc["x", "rm vs human"] == pytest.approx(2 / 3)
    assert by_subset.loc["y", "rm vs human"] == pytest.approx(0.75)
    with pytest.raises(DataError, match="no column"):
        agreement_section(labels, sources=["human", "nobody"])


@pytest.fixture(scope="module")
def arena_labels() -> pd.DataFrame:
    arena = Arena()
    prompts, a, b = response_pairs(arena, 1000, np.random.default_rng(0), minimal_pair_fraction=0.0)
    return arena_label_table(arena, prompts, a, b, seed=0)


def test_arena_agreement_report_finds_the_planted_position_and_length_biases(arena_labels):
    section = agreement_section(arena_labels, reference="gold")
    judges = section.tables["judges"]
    # first-position adds 1.5 log-odds to the first slot: about 1.5 / SE 0.08 ~ 19 standard errors.
    assert section.metrics["flagged"]["position_bias"] == ["first-position", BIASED_JUDGE.name]
    assert section.metrics["flagged"]["length_bias"] == ["verbose-lover", BIASED_JUDGE.name]
    assert judges.loc["first-position", "position_logodds"] == pytest.approx(1.5, abs=0.25)
    # verbose-lover adds 0.25 log-odds per word; per s.d. of the word difference that is 0.25 * s.
    s = (arena_labels["len_a"] - arena_labels["len_b"]).std(ddof=0)
    assert judges.loc["verbose-lover", "length_logodds"] == pytest.approx(0.25 * s, rel=0.15)
    # careful is a Bernoulli draw of gold: reference_coef ~ 1, no bias; noisy has temperature 2.5: ~ 0.4
    assert judges.loc["careful", "reference_coef"] == pytest.approx(1.0, abs=0.15)
    assert judges.loc["noisy", "reference_coef"] == pytest.approx(1 / 2.5, abs=0.1)
    # position consistency: first-position's inconsistent pairs almost all favour the first slot
    assert judges.loc["first-position", "biased_first"] > 0.3 > 0.05 > judges.loc["first-position", "biased_second"]
    assert judges.loc["careful", "consistency"] > judges.loc["first-position", "consistency"]
    # the length bias shows in the longer-response win rate as well
    assert judges.loc["verbose-lover", "longer_wins"] > judges.loc["gold", "longer_wins"] + 0.2


# ---------------------------------------------------------------------------------------------------
# Win rates
# ---------------------------------------------------------------------------------------------------


class LongerWins:
    """A toy oracle: the response with more words wins, equal lengths tie."""

    name = "longer-wins"

    def preference(self, prompts, responses_a, responses_b):
        d = torch.tensor([len(a.split()) - len(b.split()) for a, b in zip(responses_a, responses_b)])
        return (torch.sign(d).double() + 1) / 2


def test_policy_battles_pairs_outputs_by_prompt_and_orients_outcomes():
    samples = pd.DataFrame(
        {
            "prompt": ["p1", "p1", "p2", "p1", "p2", "p3"],
            "output": ["a a a", "a", "a a", "b b", "b b", "b"],
            "generator": ["A", "A", "A", "B", "B", "B"],
        }
    )
    battles = policy_battles(samples, LongerWins(), pairs="all", seed=3)
    # A and B share p1 (A's first output meets B's only one) and p2; p3 has no A output.
    assert len(battles) == 2 and set(battles["prompt"]) == {"p1", "p2"}
    for _, row in battles.iterrows():
        by_model = {row["model_a"]: row["response_a"], row["model_b"]: row["response_b"]}
        assert by_model == ({"A": "a a a", "B": "b b"} if row["prompt"] == "p1" else {"A": "a a", "B": "b b"})
        longer = len(row["response_a"].split()) - len(row["response_b"].split())
        assert row["outcome"] == (np.sign(longer) + 1) / 2
        assert (row["len_a"], row["len_b"]) == (len(row["response_a"].split()), len(row["response_b"].split()))


class FlakyJudge:
    """judge_pairs like the LLM judge: the second pair fails."""

    name = "flaky"

    def judge_pairs(self, prompts, responses_a, responses_b):
        return [PairJudgment("failed" if i == 1 else "ok", None if i == 1 else 1.0, None, None, None)
                for i in range(len(prompts))]  # fmt: skip


def test_policy_battles_drops_failed_judgments_and_counts_them():
    samples = pd.DataFrame(
        {"prompt": ["p1", "p2", "p3"] * 2, "output": list("abcdef"), "generator": ["A"] * 3 + ["B"] * 3}
    )
    battles = policy_battles(samples, FlakyJudge(), pairs="baseline", baseline="B")
    assert len(battles) == 2 and battles.attrs["failed"] == 1 and (battles["outcome"] == 1.0).all()
    with pytest.raises(DataError, match="baseline 'C'"):
        policy_battles(samples, FlakyJudge(), pairs="baseline", baseline="C")


def test_winrate_section_hand_example():
    # m vs base: outcomes from m's side 1, 1, 0.5, 0 (the last two with base as model_a: 0.5 -> 0.5,
    # 1 -> 0) -> mean 0.625, SE sqrt(((0.375^2) * 2 + 0.125^2 + 0.625^2) / 3) / 2.
    battles = pd.DataFrame(
        {
            "model_a": ["m", "m", "base", "base", "other"],
            "model_b": ["base", "base", "m", "m", "base"],
            "outcome": [1.0, 1.0, 0.5, 1.0, 0.25],
        }
    )
    section = winrate_section(battles, baseline="base", length_controlled=False, n_bootstrap=50)
    direct = section.tables["winrate_vs_baseline"]
    assert direct.loc["m", "win_rate"] == pytest.approx(0.625)
    assert direct.loc["m", "se"] == pytest.approx(math.sqrt((2 * 0.375**2 + 0.125**2 + 0.625**2) / 3) / 2)
    assert (direct.loc["m", "wins"], direct.loc["m", "ties"], direct.loc["m", "losses"]) == (2, 1, 1)
    assert direct.loc["other", "win_rate"] == pytest.approx(0.25)
    ratings = section.tables["ratings"]
    assert ratings.loc["base", "rating"] == pytest.approx(1000.0)
    assert list(section.tables["winrate_matrix"].index) == list(ratings.index)
    assert section.tables["winrate_matrix"].loc["m", "base"] == pytest.approx(0.625)
    assert set(section.figures) == {"winrate_matrix", "ratings"}
    assert all(png.startswith(b"\x89PNG") for png in section.figures.values())


def test_winrate_section_labels_the_lc_definition_and_its_length_unit():
    # m's responses are "aa bb" (2 words, 5 characters) against base's "c" (1 word, 1 character): the mean
    # length difference is 1 word or 4 characters; the caption and metrics.json name the GLM and the unit.
    rng = np.random.default_rng(0)
    n = 40
    battles = pd.DataFrame(
        {
            "model_a": ["m"] * n,
            "model_b": ["base"] * n,
            "response_a": ["aa bb"] * n,
            "response_b": ["c"] * n,
            "outcome": (rng.random(n) < 0.7).astype(float),
        }
    )
    for unit, diff in (("words", 1.0), ("characters", 4.0)):
        section = winrate_section(battles, baseline="base", length_unit=unit, n_bootstrap=20)
        caption = next(c for kind, name, c in section.blocks if name == "winrate_vs_baseline")
        assert "`length_controlled_minimal`" in caption and "without its cross-validated L1 penalty" in caption
        assert f"Δ in {unit}" in caption and f"mean length difference in {unit}" in caption
        assert section.metrics["lc_definition"] == {
            "glm": "length_controlled_minimal, unpenalized",
            "length_unit": unit,
        }
        assert section.tables["winrate_vs_baseline"].loc["m", "mean_len_diff"] == diff
    # only len_a/len_b columns: their unit is whatever they hold, and the label says that
    lens = battles.drop(columns=["response_a", "response_b"]).assign(len_a=3.0, len_b=1.0)
    section = winrate_section(lens, baseline="base", length_unit="characters", n_bootstrap=0)
    assert section.metrics["lc_definition"]["length_unit"] == "the units of the len_a/len_b columns"


# ---------------------------------------------------------------------------------------------------
# The writer and the quickstart entry point
# ---------------------------------------------------------------------------------------------------


def arena_samples(n_prompts: int, seed: int = 0) -> pd.DataFrame:
    arena, rng = Arena(), np.random.default_rng(seed)
    rows = []
    for p in arena.sample_prompts(n_prompts, rng):
        for name, probs in SYSTEMS.items():
            rows.append(
                {
                    "prompt": p.text,
                    "output": compose_response(p, arena.sample_features(rng, probs), rng),
                    "generator": name,
                }
            )
    return pd.DataFrame(rows)


def test_arena_evaluation_and_report_files(arena_labels, tmp_path):
    ev = arena_evaluation(arena_labels.iloc[:300], arena_samples(150), baseline="demonstrator", models=["careful"])
    assert set(ev.figures) == {"agreement_heatmap", "length_bias", "winrate_matrix", "ratings"}
    assert "![" in ev.markdown and "figures/winrate_matrix.png" in ev.markdown
    assert ev.html.count("data:image/png;base64,") == 4
    # the accurate system (relevant, correct, safe more often) beats the demonstrator under gold
    assert ev.metrics["win_rate_vs_baseline"]["accurate"] > 0.55
    # the quickstart's win-rate sections come from winrate_section: the LC column names its definition and unit
    assert "`length_controlled_minimal`" in ev.markdown and "Δ in words" in ev.markdown
    assert ev.metrics["lc_definition"]["length_unit"] == "words"
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "stale.csv").write_text("old")
    paths = write_report(tmp_path, ev.sections, title="T", intro="intro `x`")
    html = paths["html"].read_text()
    assert html.startswith("<!doctype html>") and 'src="figures/' not in html and "<code>x</code>" in html
    assert paths["markdown"].read_text().startswith("# T\n\nintro `x`")
    assert not (tmp_path / "tables" / "stale.csv").exists()
    for section in ev.sections:
        for name, frame in section.tables.items():
            back = pd.read_csv(tmp_path / "tables" / f"{name}.csv", index_col=list(range(frame.index.nlevels)))
            np.testing.assert_allclose(back.select_dtypes("number").to_numpy(dtype=float),
                                       frame.select_dtypes("number").to_numpy(dtype=float), rtol=1e-12)  # fmt: skip
            records = json.loads((tmp_path / "tables" / f"{name}.json").read_text())
            assert len(records) == len(frame)
        for name in section.figures:
            assert (tmp_path / "figures" / f"{name}.png").read_bytes() == section.figures[name]
    judges = json.loads((tmp_path / "tables" / "judges.json").read_text())
    assert next(r for r in judges if r["source"] == "gold")["position_logodds"] is None  # NaN -> null


# The dependency is one way: evaluation imports prefgame, no module of prefgame imports evaluation (not even
# inside a function). The one reference is by name: prefgame.cli's command table names the modules of the
# quickstart and evaluate commands as strings and loads them on demand (docs/design.md §2.2).
COMMAND_TABLE = "cli.py"
MODULE_PATH = re.compile(r"evaluation(\.\w+)*(:\w+)?")


def _is_evaluation(name: str) -> bool:
    return name == "evaluation" or name.startswith(("evaluation.", "evaluation:"))


def test_prefgame_never_imports_evaluation():
    modules = sorted((ROOT / "prefgame").rglob("*.py"))
    assert len(modules) > 40 and ROOT / "prefgame" / COMMAND_TABLE in modules
    named = set()
    for path in modules:
        where = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(_is_evaluation(a.name) for a in node.names), f"{where}:{node.lineno}"
            elif isinstance(node, ast.ImportFrom):
                assert not _is_evaluation(node.module or ""), f"{where}:{node.lineno}"
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                func = ast.unparse(node.func)  # importlib.import_module("evaluation...") or __import__(...)
                if func.endswith(("import_module", "__import__")) and isinstance(node.args[0].value, str):
                    assert not _is_evaluation(node.args[0].value), f"{where}:{node.lineno}"
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_PATH.fullmatch(node.value):
                named.add(where)
    assert named == {f"prefgame/{COMMAND_TABLE}"}  # the by-name entries of the command table, nowhere else


# ---------------------------------------------------------------------------------------------------
# prefgame evaluate
# ---------------------------------------------------------------------------------------------------


def test_evaluate_cli_winrate_agreement_report(arena_dir, arena_labels, tmp_path, capsys):
    out = tmp_path / "wr"
    args = [f"output_dir={out}", f"winrate.battles={arena_dir / 'battles.jsonl'}", "winrate.baseline=demonstrator",
            "n_bootstrap=20"]  # fmt: skip
    assert main(["evaluate", "winrate", *args]) == 0
    assert "win rate vs baseline" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["win_rate_vs_baseline"]) == {"accurate", "verbose", "poet"}
    assert (out / "report.html").exists() and (out / "tables" / "ratings.csv").exists()

    labels_file = tmp_path / "labels.jsonl"
    write_jsonl(labels_file, arena_labels.iloc[:400].to_dict(orient="records"))
    out = tmp_path / "ag"
    assert main(["evaluate", "agreement", f"output_dir={out}", f"agreement.labels={labels_file}",
                 "agreement.reference=gold"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "position bias: first-position" in printed and "length bias:   verbose-lover" in printed
    # the arena labels its own pairs when no labels file is given, and keeps them
    out = tmp_path / "ag-arena"
    assert main(["evaluate", "agreement", f"output_dir={out}", "agreement.arena_pairs=300"]) == 0
    assert len(read_jsonl(out / "labels.jsonl")) == 300 and (out / "tables" / "kappa.json").exists()
    assert main(["evaluate", "agreement", f"output_dir={out}", "agreement.arena_pairs=300",
                 f"agreement.labels={labels_file}"]) == 2  # fmt: skip

    # generated outputs judged now by the arena's gold preference, plus the labels: one report
    samples = arena_samples(40)
    files = []
    for name, group in samples.groupby("generator"):
        files.append(tmp_path / f"{name}.jsonl")
        write_jsonl(files[-1], group.to_dict(orient="records"))
    out = tmp_path / "report"
    code = main(["evaluate", "report", f"output_dir={out}", f"winrate.samples=[{','.join(map(str, files))}]",
                 "winrate.baseline=demonstrator", "winrate.judge.kind=gold", f"agreement.labels={labels_file}",
                 "n_bootstrap=20"])  # fmt: skip
    assert code == 0
    battles = read_jsonl(out / "battles.jsonl")
    assert len(battles) == 3 * 40 and {b["model_b"] for b in battles} | {b["model_a"] for b in battles} == set(SYSTEMS)
    md = (out / "report.md").read_text()
    assert "## Win rates and ratings" in md and "## Agreement between label sources" in md
    assert main(["evaluate", "report", f"output_dir={tmp_path / 'none'}"]) == 2
    assert "needs winrate.battles" in capsys.readouterr().err
