"""``prefgame quickstart`` end to end at toy scale: every stage's output, the report's sections with
figures from the run, and resume re-rendering the report from finished stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefgame.cli import main

SMALL = ["sft.max_steps=5", "samples=120", "label_pairs=60", "eval_prompts=30", "sft_examples=400", "pairs=600",
         "hacking.prompts=2", "hacking.pool=16", "hacking.ns=[1,4,16]", "hacking.head_steps=5"]  # fmt: skip


def _run(out: Path, *extra: str) -> None:
    assert main(["quickstart", f"output_dir={out}", *SMALL, *extra]) == 0


def _sections(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("## ")]


def test_quickstart_without_policy_training_writes_every_stage_and_resumes(tmp_path: Path, monkeypatch) -> None:
    from test_judges import FakeJudgeServer

    out, server = tmp_path / "qs", FakeJudgeServer()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-quickstart-secret")
    judge = ["llm_judge=true", f"judge.base_url={server.base_url}", "judge.model=judge-test",
             f"judge.cache_dir={tmp_path / 'judgments'}", "judge.backoff_base_s=0.01"]  # fmt: skip
    try:
        _run(out, "selfplay=[]", "baselines=false", *judge)
    finally:
        server.close()
    assert server.requests > 0 and "sk-quickstart-secret" not in (out / "config.yaml").read_text()
    for name in ("config.yaml", "metrics.json", "samples.jsonl", "labels.jsonl", "policies.jsonl", "report.html"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {r["kind"] for r in metrics["preference_models"]} == {"bt", "gpm", "gated"}
    assert set(metrics["policies"]) == {"π0", "π* (exact)"}
    assert metrics["policies"]["π* (exact)"]["gap"] < 1e-8  # the exact equilibrium has no duality gap
    # wall and CPU time of every stage; the stages' CPU seconds run one after another and add up to less than the run's
    cpu = metrics["cpu_seconds"]
    assert set(cpu) == set(metrics["seconds"]) and "sft" in cpu and "labels" in cpu
    assert all(v >= 0 for v in cpu.values()) and 0 < sum(v for k, v in cpu.items() if k != "total") <= cpu["total"]
    assert set(metrics["worlds"]) == {"cyclic", "transitive"}  # the control world runs the same stages
    assert set(metrics["worlds"]["transitive"]) == {"π0", "π* (exact)"}
    transitive_pms = json.loads((out / "transitive" / "pm" / "metrics.json").read_text())["models"]
    assert {r["kind"] for r in transitive_pms} == {"bt", "gpm"}
    # in the transitive world the whole exploitability is what a reward function can see
    for m in metrics["worlds"]["transitive"].values():
        assert m["exploitability"] == m["exploitability_transitive"]
    report = (out / "report.md").read_text()
    titles = _sections(report)
    assert titles[:5] == [
        "## Finding",
        "## 1. The world",
        "## 2. π0 (SFT)",
        "## 3. Preference models",
        "## 4. Agreement between label sources",
    ]
    assert "π0's class distribution" in report and "| style | formal |" in report
    labels = (out / "labels.jsonl").read_text().splitlines()
    assert len(labels) == 60 and {"gold", "careful", "biased-judge", "llm-judge:judge-test"} <= set(
        json.loads(labels[0])
    )
    assert "llm-judge:judge-test" in report  # the LLM judge joins the agreement tables
    assert "data:image/png;base64," in (out / "report.html").read_text()
    # the reward-hacking stage: one curve per proxy, its figure and tables
    assert "## Reward hacking: best-of-n against proxies of a biased annotator" in titles
    assert {r["proxy"] for r in metrics["reward_hacking"]["peaks"]} == {
        "BT", "BT + linear LCB (c=16)", "BT + linear LCB (c=64)", "BT + linear LCB (c=256)",
        "BT ensemble (pessimistic)", "GPM",
    }  # fmt: skip
    assert (out / "figures" / "reward_hacking.png").is_file() and (out / "hacking" / "curves.csv").is_file()
    # resume: every stage is kept; the report is written again from their outputs
    stamp = (out / "pi0" / "model" / "model.safetensors").stat().st_mtime_ns
    (out / "report.md").unlink()
    _run(out, "selfplay=[]", "baselines=false", "resume=true")  # no judge now: labels.jsonl is recomputed
    assert (out / "pi0" / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    assert _sections((out / "report.md").read_text()) == titles


@pytest.mark.slow
def test_full_quickstart_report_has_every_policy(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    _run(out, "selfplay=[inpo]")
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["policies"]) == {"π0", "inpo", "dpo", "online_dpo", "ppo", "π* (exact)"}
    assert set(metrics["worlds"]["transitive"]) == set(metrics["policies"])
    report = (out / "report.md").read_text()
    assert "In the cyclic world (c = 2.5), self-play (inpo) takes exploitability from" in report
    assert "In the transitive world (c = 0.0)" in report
    assert (out / "figures" / "finding.png").is_file() and (out / "figures" / "policies_style.png").is_file()
    titles = _sections(report)
    assert "## 5. Nash self-play: convergence" in titles and "## 7. Win rates and ratings (gold)" in titles
    assert (out / "figures" / "selfplay_convergence.png").is_file()
    # the LC win rates say which definition and which length unit they use
    assert "`length_controlled_minimal`" in report and "Δ in words" in report


def test_quickstart_budget_applies_to_every_self_play_preset() -> None:
    """The quickstart's self-play settings are valid on top of each arena preset: every run samples
    prompts × (K + M) responses per iteration, π0's M samples only for the algorithms that take them."""
    from evaluation.quickstart import QuickstartConfig, _selfplay_overrides
    from prefgame.train.selfplay import ALGORITHMS, selfplay_config

    cfg = QuickstartConfig()
    b = cfg.budget
    for algorithm, spec in ALGORITHMS.items():
        sp = selfplay_config(algorithm, None, _selfplay_overrides(cfg, algorithm))
        assert sp.algorithm == algorithm and sp.train.iterations == b.iterations
        assert sp.sampling.prompts_per_iteration == b.prompts and sp.train.steps_per_iteration == b.steps
        k, m = sp.sampling.samples_per_prompt, sp.sampling.reference_samples_per_prompt
        assert k + m == b.samples + b.reference_samples and m == (b.reference_samples if spec.anchors else 0)
        assert sp.train.average_from == b.iterations // 2 and sp.game.tau == cfg.tau
