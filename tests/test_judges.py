"""Tests of the pairwise judges (prefgame.judges).

The LLM judge runs with the real ``openai`` client against a small OpenAI-compatible server started
on 127.0.0.1 (``tests/helpers/judge_server.py``: stdlib ``http.server``, ephemeral port). The server's
verdicts are computed from the request, so every expected value below follows from its rules:

- a response containing the word GOOD beats one without; otherwise the longer response wins and
  equal lengths tie;
- a request whose prompt contains BIASED always prefers the response shown first (position bias);
- NOVERDICT in the prompt: every answer lacks a verdict; REASKOK: only the first ask lacks one;
- log-probs of the verdict token (when asked): (A, B, C, other) = (.54, .27, .09, .10) when the
  first shown response is the longer one, (.36, .45, .09, .10) when it is the shorter one;
- faults (429 with Retry-After 0.2 s, 500, a reply slower than the client's timeout, 401 for a
  wrong key) are injected on a schedule or by setting.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.judge_server import RETRY_AFTER_S, FakeJudgeServer

from prefgame.config import config_to_yaml, load_config
from prefgame.errors import ConfigError, PrefgameError
from prefgame.judges import (
    DEFAULT_TEMPLATE,
    JudgeConfig,
    JudgeError,
    JudgmentCache,
    LLMJudge,
    combine_orders,
    load_template,
    parse_verdict,
    render,
    soft_verdict,
)
from prefgame.oracle import PreferenceOracle

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-test-7f3a9c-NEVER-LEAK"


@pytest.fixture
def server():
    s = FakeJudgeServer()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def judge_config(server: FakeJudgeServer, tmp_path: Path, **overrides) -> JudgeConfig:
    settings = dict(
        model="judge-test",
        base_url=server.base_url,
        api_key=KEY,
        max_concurrency=4,
        max_retries=3,
        backoff_base_s=0.01,
        max_retry_wait_s=5.0,
        timeout_s=5.0,
        cost_per_1k_input=0.5,
        cost_per_1k_output=1.5,
        cache_dir=str(tmp_path / "cache"),
    )
    settings.update(overrides)
    return JudgeConfig(**settings)


def cache_lines(tmp_path: Path) -> list[dict]:
    path = tmp_path / "cache" / "judgments.jsonl"
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


# Three pairs with known outcomes: a has GOOD (a wins), b has GOOD (b wins), equal lengths (tie).
PROMPTS = ["what is two plus two ?", "name a color .", "say hi ."]
A = ["GOOD it is four", "red", "hello"]
B = ["it is four", "GOOD blue", "howdy"]


# -- pure functions ----------------------------------------------------------------------------------
def test_parse_verdict_takes_the_last_marker():
    assert parse_verdict("I compare [[A]] and [[B]] ...\n[[B]]") == "B"
    assert parse_verdict("verdict: [[ C ]]") == "C"
    assert parse_verdict("A is better") is None
    assert parse_verdict("") is None


def test_render_fills_placeholders_once_and_leaves_other_braces():
    template = "Q: {prompt} | {response_a} vs {response_b} | {other}"
    out = render(template, "p {x}", "uses {response_b}", "b")
    assert out == "Q: p {x} | uses {response_b} vs b | {other}"


def test_template_file_is_checked(tmp_path):
    good = tmp_path / "t.txt"
    good.write_text("{prompt}\n{response_a}\n{response_b}\nverdict please")
    assert load_template(good) == good.read_text()
    assert load_template("") == DEFAULT_TEMPLATE
    bad = tmp_path / "bad.txt"
    bad.write_text("{prompt} {response_a}")
    with pytest.raises(PrefgameError, match=r"lacks the placeholder\(s\) \{response_b\}"):
        load_template(bad)
    with pytest.raises(PrefgameError, match="judge template not found"):
        load_template(tmp_path / "missing.txt")


def test_soft_verdict_by_hand():
    # Verdict token "A" with alternatives A .5, B .3, C .1, "x" .1: renormalized over A, B, C
    # (total .9): P(first) = (.5 + .1/2) / .9 = 0.6111...
    alts = [("A", math.log(0.5)), ("B", math.log(0.3)), ("C", math.log(0.1)), ("x", math.log(0.1))]
    tokens = [("Response", []), (" A", []), (" wins.\n[[", []), ("A", alts), ("]]", [])]
    assert soft_verdict(tokens) == pytest.approx(0.55 / 0.9, abs=1e-12)
    # A tokenizer that merges "[[" and the letter: alternatives "[[B", " [[C" still count.
    merged = [("ok ", []), ("[[A", [("[[A", math.log(0.2)), ("[[B", math.log(0.6)), (" [[C", math.log(0.2))])]
    merged.append(("]]", []))
    assert soft_verdict(merged) == pytest.approx(0.2 + 0.1, abs=1e-12)
    assert soft_verdict([("no verdict", [])]) is None
    assert soft_verdict([("[[", []), ("A", [("zzz", 0.0)]), ("]]", [])]) is None


@pytest.mark.parametrize(
    ("ab", "ba", "expected", "consistent"),
    [
        ("A", "B", 1.0, True),  # a wins shown first, and b loses shown first
        ("B", "A", 0.0, True),
        ("C", "C", 0.5, True),
        ("A", "A", 0.5, False),  # both orders favour the first position: a tie
        ("B", "B", 0.5, False),
        ("A", "C", 0.5, False),
    ],
)
def test_combine_orders_hard(ab, ba, expected, consistent):
    assert combine_orders(ab, ba) == (expected, consistent)


def test_combine_orders_soft_average():
    # p_ab = .8 (a first), p_ba = .4 (b first, so P(a≻b) from it is .6): average .7
    assert combine_orders("A", "B", 0.8, 0.4)[0] == pytest.approx(0.7, abs=1e-15)


def test_cache_skips_cut_line_and_never_reuses_failures(tmp_path):
    cache = JudgmentCache(tmp_path)
    cache.put({"key": "k1", "status": "ok", "verdict": "A"})
    cache.put({"key": "k2", "status": "failed", "error": "boom"})
    path = tmp_path / "judgments.jsonl"
    with open(path, "ab") as fh:
        fh.write(b'{"key": "k3", "sta')  # a line cut by a kill
    again = JudgmentCache(tmp_path)
    assert again.get("k1")["verdict"] == "A"
    assert again.get("k2") is None and again.get("k3") is None
    assert (again.loaded_ok, again.loaded_failed, again.skipped_lines) == (1, 1, 1)
    again.put({"key": "k4", "status": "ok", "verdict": "B"})  # starts on a fresh line
    third = JudgmentCache(tmp_path)
    assert third.get("k4")["verdict"] == "B" and third.skipped_lines == 1


def test_config_overrides_and_redaction():
    cfg = load_config(JudgeConfig, overrides=["model=m", f"api_key={KEY}", "max_concurrency=2"])
    assert (cfg.model, cfg.max_concurrency) == ("m", 2)
    assert KEY not in config_to_yaml(cfg) and KEY not in repr(cfg)
    with pytest.raises(ConfigError, match="did you mean 'max_retries'"):
        load_config(JudgeConfig, overrides=["max_retry=3"])
    with pytest.raises(ConfigError, match="max_concurrency must be >= 1"):
        load_config(JudgeConfig, overrides=["max_concurrency=0"])


# -- the LLM judge against the fake endpoint ---------------------------------------------------------------
def test_both_orders_labels_and_accounting(server, tmp_path):
    with LLMJudge(judge_config(server, tmp_path)) as judge:
        assert isinstance(judge, PreferenceOracle)
        records = judge.judge_pairs(PROMPTS, A, B)
        assert [r.preference for r in records] == [1.0, 0.0, 0.5]
        assert all(r.status == "ok" and r.consistent for r in records)
        assert [(r.ab.verdict, r.ba.verdict) for r in records] == [("A", "B"), ("B", "A"), ("C", "C")]
        assert server.requests == 6  # both orders of 3 pairs
        # The swapped pairs reuse the same two judgments; an identical pair needs one.
        p = judge.preference(PROMPTS + ["x"], B + ["same"], A + ["same"])
        assert p.tolist() == [0.0, 1.0, 0.5, 0.5] and p.dtype == torch.float64
        assert server.requests == 7
        stats = judge.stats
    assert stats["prompt_tokens"] == server.prompt_tokens > 0
    assert stats["completion_tokens"] == server.completion_tokens > 0
    expected_cost = (server.prompt_tokens * 0.5 + server.completion_tokens * 1.5) / 1000
    assert stats["cost"] == pytest.approx(expected_cost, rel=1e-12)
    assert (stats["requests"], stats["judgments"], stats["cache_hits"], stats["failures"]) == (7, 7, 6, 0)
    assert {f"Bearer {KEY}"} == server.authorization


def test_position_inconsistent_verdicts_count_as_ties(server, tmp_path):
    judge = LLMJudge(judge_config(server, tmp_path))
    records = judge.judge_pairs(["BIASED judge this"], ["GOOD long answer"], ["short"])
    assert (records[0].ab.verdict, records[0].ba.verdict) == ("A", "A")  # both orders asked
    assert records[0].preference == 0.5 and records[0].consistent is False
    assert judge.stats["inconsistent_pairs"] == 1


def test_retries_429_500_and_timeouts_then_completes(server, tmp_path):
    server.faults.extend(["429", "ok", "500", "slow"])
    judge = LLMJudge(judge_config(server, tmp_path, max_concurrency=1, timeout_s=0.3), seed=0)
    p = judge.preference(PROMPTS, A, B)
    assert p.tolist() == [1.0, 0.0, 0.5]
    assert server.requests == 6 + 3 and judge.stats["retries"] == 3
    (t429, _), (t_next, _) = server.log[0], server.log[1]
    assert RETRY_AFTER_S <= t_next - t429 < RETRY_AFTER_S + 0.5  # Retry-After honoured (×[1, 1.1] jitter)


def test_retry_budget_exhausted_is_a_failure_not_a_label(server, tmp_path):
    server.faults.extend(["500"] * 3)
    judge = LLMJudge(judge_config(server, tmp_path, max_concurrency=1, max_retries=2))
    records = judge.judge_pairs(PROMPTS[:1], A[:1], B[:1])
    assert records[0].status == "failed" and records[0].preference is None
    assert "gave up after 3 attempts; last: HTTP 500" in records[0].error


def test_second_run_makes_no_requests(server, tmp_path):
    first = LLMJudge(judge_config(server, tmp_path)).preference(PROMPTS, A, B)
    assert server.requests == 6
    again = LLMJudge(judge_config(server, tmp_path))  # a new process would build the same judge
    assert torch.equal(again.preference(PROMPTS, A, B), first)
    assert server.requests == 6 and again.stats["cache_hits"] == 6 and again.stats["cost"] == 0.0
    # Anything that changes the verdict changes the key: another template is asked afresh.
    other = tmp_path / "t.txt"
    other.write_text("Which is better?\n" + DEFAULT_TEMPLATE)
    LLMJudge(judge_config(server, tmp_path, template_path=str(other))).preference(PROMPTS, A, B)
    assert server.requests == 12


def test_run_stopped_midway_resumes_with_only_missing_pairs(server, tmp_path):
    prompts = [f"question {i}" for i in range(6)]
    a = [f"answer {i} " + "x" * i for i in range(6)]
    b = [f"reply {i}" for i in range(6)]

    def crash_after_three(judgment, seen=[]):  # noqa: B006 (a counter across calls)
        seen.append(judgment)
        if len(seen) == 3:
            raise RuntimeError("killed")

    judge = LLMJudge(judge_config(server, tmp_path, max_concurrency=2))
    with pytest.raises(RuntimeError, match="killed"):
        judge.judge_pairs(prompts, a, b, on_judgment=crash_after_three)
    kept = [row for row in cache_lines(tmp_path) if row["status"] == "ok"]
    assert len(kept) >= 3 and server.requests == len(kept)  # every answer paid for was stored
    before = server.requests
    restarted = LLMJudge(judge_config(server, tmp_path, max_concurrency=2))
    restarted.preference(prompts, a, b)
    assert server.requests - before == 12 - len(kept)


_KILLED_CHILD = """
import sys
from prefgame.judges import JudgeConfig, LLMJudge
base_url, cache_dir = sys.argv[1:3]
cfg = JudgeConfig(model="judge-test", base_url=base_url, cache_dir=cache_dir, max_concurrency=2)
n = 20
LLMJudge(cfg).preference([f"q {i}" for i in range(n)], [f"a {i} " + "x" * i for i in range(n)],
                         [f"b {i}" for i in range(n)])
"""


def test_sigkilled_process_loses_no_paid_judgment(server, tmp_path):
    server.delay_s = 0.05
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    cache_file = tmp_path / "cache" / "judgments.jsonl"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, server.base_url, str(tmp_path / "cache")], env=env, cwd=REPO
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and child.poll() is None:
            if cache_file.exists() and cache_file.read_text().count("\n") >= 6:
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    with open(cache_file, "ab") as fh:
        fh.write(b'{"key": "cut", "status": "o')  # what a kill in the middle of a write leaves
    kept = [row for row in cache_lines(tmp_path) if row["status"] == "ok"]
    assert 6 <= len(kept) < 40
    server.delay_s = 0.0
    before = server.requests
    judge = LLMJudge(judge_config(server, tmp_path))
    n = 20
    p = judge.preference(
        [f"q {i}" for i in range(n)], [f"a {i} " + "x" * i for i in range(n)], [f"b {i}" for i in range(n)]
    )
    assert judge.cache.skipped_lines == 1
    assert server.requests - before == 40 - len(kept)
    assert (p == 1.0).all()  # every a is the longer response


def test_unparsable_answer_reasked_once_then_failed(server, tmp_path):
    judge = LLMJudge(judge_config(server, tmp_path))
    records = judge.judge_pairs(["NOVERDICT q", "REASKOK q"], ["GOOD a", "GOOD a"], ["b", "b"])
    failed, recovered = records
    assert failed.status == "failed" and failed.preference is None and failed.consistent is None
    assert failed.ab.verdict is None and "also after one re-ask" in failed.error
    assert recovered.status == "ok" and recovered.preference == 1.0
    assert server.requests == 8  # 2 orders × (ask + re-ask) for each pair
    assert judge.stats["reasks"] == 4 and judge.stats["failures"] == 2
    statuses = sorted(row["status"] for row in cache_lines(tmp_path))
    assert statuses == ["failed", "failed", "ok", "ok"]
    with pytest.raises(JudgeError, match="1 of 2 pairs could not be judged"):
        judge.preference(["NOVERDICT q", "REASKOK q"], ["GOOD a", "GOOD a"], ["b", "b"])
    assert server.requests == 12  # the failed pair is asked again; the judged one is not


def test_logprob_soft_preference(server, tmp_path):
    # a is longer. a first: (.54 + .09/2)/.9 = .65; b first: (.36 + .09/2)/.9 = .45;
    # P(a ≻ b) = ½ + (.65 − .45)/2 = .6
    judge = LLMJudge(judge_config(server, tmp_path, use_logprobs=True))
    records = judge.judge_pairs(["q"], ["a longer answer"], ["short"])
    assert records[0].ab.p_first == pytest.approx(0.65, abs=1e-12)
    assert records[0].ba.p_first == pytest.approx(0.45, abs=1e-12)
    assert records[0].preference == pytest.approx(0.6, abs=1e-12) and records[0].consistent
    assert judge.preference(["q"], ["short"], ["a longer answer"]).item() == pytest.approx(0.4, abs=1e-12)
    # An endpoint without log-probs: hard verdicts, counted.
    server.serve_logprobs = False
    plain = LLMJudge(judge_config(server, tmp_path / "other", use_logprobs=True))
    assert plain.preference(["q"], ["a longer answer"], ["short"]).item() == 1.0
    assert plain.stats["no_logprobs"] == 2


def test_api_key_never_leaks(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # the openai and httpx loggers included
    server.faults.extend(["500", "429"])
    cfg = judge_config(server, tmp_path)
    judge = LLMJudge(cfg)
    judge.judge_pairs(PROMPTS + ["NOVERDICT q"], A + ["a"], B + ["b"])
    with pytest.raises(JudgeError) as failed:
        judge.preference(["NOVERDICT q"], ["a"], ["b"])
    server.require_key = "sk-the-right-one"
    with pytest.raises(JudgeError, match="rejected the API key") as rejected:
        LLMJudge(judge_config(server, tmp_path / "c2")).preference(["q"], ["a"], ["b"])
    assert f"Bearer {KEY}" in server.authorization  # the key was used...
    texts = {
        "log": caplog.text,
        "cache": (tmp_path / "cache" / "judgments.jsonl").read_text(),
        "errors": str(failed.value) + str(rejected.value),
        "config": config_to_yaml(cfg) + repr(cfg),
        "stats": json.dumps(judge.stats),
    }
    assert "retry" in caplog.text  # the logs are there and say something
    for where, text in texts.items():
        assert KEY not in text and KEY[-10:] not in text, where  # ...and appears nowhere else


def test_endpoint_down_is_one_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    url = f"http://127.0.0.1:{port}/v1"
    cfg = JudgeConfig(model="m", base_url=url, api_key=KEY, backoff_base_s=0.01, cache_dir=str(tmp_path))
    start = time.monotonic()
    with pytest.raises(JudgeError) as err:
        LLMJudge(cfg).preference(["q"], ["a"], ["b"])
    message = str(err.value)
    assert "\n" not in message and f"cannot reach the judge endpoint {url}" in message
    assert "start the server, or fix judge.base_url" in message and KEY not in message
    assert time.monotonic() - start < 5


def test_key_and_url_from_environment(server, tmp_path, monkeypatch):
    with pytest.raises(JudgeError, match="set OPENAI_API_KEY"):
        LLMJudge(JudgeConfig(cache_dir=None))  # OpenAI's endpoint needs a key
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    judge = LLMJudge(JudgeConfig(model="judge-test", cache_dir=None))
    assert judge.preference(PROMPTS, A, B).tolist() == [1.0, 0.0, 0.5]
    assert server.authorization == {f"Bearer {KEY}"}


# -- the local LM judge ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_judge():
    from transformers import LlamaForCausalLM

    from prefgame.arena.lm import build_tokenizer, tiny_llama_config
    from prefgame.judges import LocalLMJudge

    tok = build_tokenizer()
    tok.add_tokens(["A", "B", "[["])
    torch.manual_seed(0)
    cfg = tiny_llama_config(tok, hidden_size=64, num_layers=2, intermediate_size=128, max_position_embeddings=512)
    model = LlamaForCausalLM(cfg)
    template = "<user-prompt> {prompt} <a> {response_a} <b> {response_b} which is better ? A or B"
    return LocalLMJudge(model, tok, template=template, batch_size=3)


LOCAL_X = ["what is two plus two ?", "tell me about the ocean .", "hello", "what is two plus two ?"]
LOCAL_A = ["the answer is four .", "the ocean is big and deep .", "hello", "four"]
LOCAL_B = ["five", "i do not know", "hello there friend", "the answer is four ."]


def test_local_judge_is_antisymmetric_and_in_range(local_judge):
    assert isinstance(local_judge, PreferenceOracle)
    p_ab = local_judge.preference(LOCAL_X, LOCAL_A, LOCAL_B)
    p_ba = local_judge.preference(LOCAL_X, LOCAL_B, LOCAL_A)
    assert p_ab.shape == (4,) and ((p_ab >= 0) & (p_ab <= 1)).all()
    torch.testing.assert_close(p_ab + p_ba, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (p_ab - 0.5).abs().max() > 1e-4  # the model's logits are read, not a constant ½
    assert local_judge.preference(LOCAL_X, LOCAL_A, LOCAL_A).tolist() == [0.5] * 4


def test_local_judge_matches_a_direct_forward_pass(local_judge):
    # Batched with left padding (batch_size 3 of 8 sequences) equals one unpadded forward each.
    from prefgame.lm import encode_prompt

    tok, model = local_judge.tokenizer, local_judge.model
    got = local_judge.first_probability(LOCAL_X, LOCAL_A, LOCAL_B)
    for i in range(len(LOCAL_X)):
        ids = encode_prompt(tok, render(local_judge.template, LOCAL_X[i], LOCAL_A[i], LOCAL_B[i]))
        ids = ids + tok("[[", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        a_id, b_id = tok.convert_tokens_to_ids(["A", "B"])
        expected = torch.softmax(logits[[a_id, b_id]].double(), dim=-1)[0]
        assert got[i].item() == pytest.approx(expected.item(), abs=1e-5)


def test_local_judge_rejects_unknown_verdict_tokens(local_judge):
    from prefgame.judges import LocalLMJudge

    with pytest.raises(PrefgameError, match="is not one known token"):
        LocalLMJudge(local_judge.model, local_judge.tokenizer, verdict_tokens=("Yes", "No"))


# -- the LLM judge in evaluation reports -------------------------------------------------------------
def test_evaluate_winrate_with_the_llm_judge_and_its_cache(server, tmp_path, monkeypatch):
    """`prefgame evaluate winrate` judging generated outputs through the real client: the model whose
    outputs say GOOD wins every pair; a second run is answered from the cache with zero requests."""
    from prefgame.cli import main
    from prefgame.run import write_jsonl

    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # the key comes from the environment and is never written
    prompts = [f"question {i} ?" for i in range(5)]
    files = []
    for name, text in (("good", "GOOD answer"), ("plain", "plain answer here")):
        files.append(tmp_path / f"{name}.jsonl")
        write_jsonl(
            files[-1], [{"prompt": p, "output": f"{text} {i}", "generator": name} for i, p in enumerate(prompts)]
        )
    args = ["evaluate", "winrate", f"output_dir={tmp_path / 'eval'}", f"winrate.samples=[{files[0]},{files[1]}]",
            "winrate.baseline=plain", "winrate.judge.kind=llm", "winrate.judge.llm.model=judge-test",
            f"winrate.judge.llm.base_url={server.base_url}", f"winrate.judge.llm.cache_dir={tmp_path / 'cache'}",
            "winrate.judge.llm.backoff_base_s=0.01", "n_bootstrap=10"]  # fmt: skip
    server.faults.extend(["429", "500"])  # retried: every pair still completes
    assert main(args) == 0
    assert server.requests == 2 * 5 + 2
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["win_rate_vs_baseline"] == {"good": 1.0}
    usage = metrics["winrate_inputs"]["judge_usage"]
    assert (usage["judgments"], usage["retries"], usage["failures"]) == (10, 2, 0)
    assert main([*args, "overwrite=true"]) == 0 and server.requests == 12  # all from the cache
    for path in (tmp_path / "eval").rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="replace"), path


def test_llm_judge_columns_in_arena_label_tables_show_its_position_bias(server, tmp_path):
    """An LLM judge among the label sources keeps its two single-order verdicts, so the agreement
    report measures its position consistency: the fake judge always answers A on BIASED prompts."""
    import pandas as pd

    from evaluation.report import judge_table

    judge = LLMJudge(judge_config(server, tmp_path))
    prompts = ["BIASED pick one ."] * 3 + ["pick one ."] * 3
    a = ["GOOD x", "y", "z z z", "GOOD x", "y", "z z z"]
    b = ["y", "GOOD x", "z", "y", "GOOD x", "z"]
    records = judge.judge_pairs(prompts, a, b)
    labels = pd.DataFrame({"prompt": prompts, "response_a": a, "response_b": b})
    labels["llm"] = [r.preference for r in records]
    labels["llm:first"] = [1.0 if r.ab.verdict == "A" else 0.0 for r in records]
    labels["llm:swapped"] = [1.0 if r.ba.verdict == "A" else 0.0 for r in records]
    table = judge_table(labels, ["llm"])
    # BIASED rows: both orders say "first" -> inconsistent, toward the first slot (3 of 6 pairs), and the
    # combined label is a tie; the other 3 pairs are consistent.
    assert table.loc["llm", "consistency"] == pytest.approx(0.5)
    assert table.loc["llm", "biased_first"] == pytest.approx(0.5) and table.loc["llm", "biased_second"] == 0.0
    assert labels["llm"].tolist()[:3] == [0.5, 0.5, 0.5]
    assert table.loc["llm", "first_slot_rate"] == pytest.approx((3 + 2) / 6)  # GOOD first in rows 4; longer in 6
