"""Tests of the preference data layer (prefgame.data) and the ``prefgame data validate`` command.

Fixtures live in tests/fixtures/data/; the parquet copy of pairs.jsonl is written at test time.
The ``datasets`` cache is redirected to a temporary folder so tests leave nothing in ~/.cache.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd
import pytest

from prefgame.cli import main as cli_main
from prefgame.data import (
    BATTLES_FEATURES,
    PAIRS_FEATURES,
    RANKINGS_FEATURES,
    InvalidDataError,
    apply_chat_template_or_plain,
    detect_format,
    load_preferences,
    ratings_features,
    split_hh_transcript,
    summarize,
)
from prefgame.data.formats import RowError
from prefgame.data.load import looks_like_hub_name
from prefgame.errors import DataError

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "data"

PAIR_COLUMNS = "prompt prompt_messages chosen rejected label subset source score_chosen score_rejected".split()
ATTRIBUTES = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
RATING_COLUMNS = ["prompt", "prompt_messages", "response", *ATTRIBUTES, "subset"]
BATTLE_COLUMNS = "prompt prompt_messages model_a model_b winner judge response_a response_b subset".split()


@pytest.fixture(scope="module", autouse=True)
def _datasets_cache(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
        mp.setenv("HF_DATASETS_CACHE", str(cache))
        datasets.disable_progress_bars()
        yield cache


@pytest.fixture(scope="module")
def parquet_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("parquet") / "pairs.parquet"
    rows = [json.loads(line) for line in (FIXTURES / "pairs.jsonl").read_text().splitlines()]
    pd.DataFrame(rows).to_parquet(path)
    return path


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def triples(ds: datasets.Dataset) -> list[tuple]:
    return [(r["prompt"], r["prompt_messages"], r["chosen"], r["rejected"]) for r in ds]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# -- schema of every fixture -------------------------------------------------------------------


def _check_messages(messages: list) -> None:
    assert isinstance(messages, list) and messages
    for m in messages:
        assert set(m) == {"role", "content"} and isinstance(m["role"], str) and isinstance(m["content"], str)


@pytest.mark.parametrize(
    "name, fmt, rows",
    [
        ("pairs.jsonl", "pairs", 13),
        ("hh.jsonl", "hh", 12),
        ("chat.jsonl", "chat", 11),
        ("pairs.parquet", "pairs", 13),
    ],
)
def test_pair_fixtures_normalize_to_schema(name: str, fmt: str, rows: int, parquet_pairs: Path) -> None:
    source = str(parquet_pairs) if name.endswith(".parquet") else fixture(name)
    data = load_preferences(source)
    assert (data.kind, data.format, data.source, data.problems) == ("pairs", fmt, source, [])
    ds = data.dataset
    assert ds.column_names == PAIR_COLUMNS
    assert ds.features == PAIRS_FEATURES
    assert len(ds) == rows
    for r in ds:
        for col in ("prompt", "chosen", "rejected", "subset", "source"):
            assert isinstance(r[col], str)
        _check_messages(r["prompt_messages"])
        assert r["prompt_messages"][-1] == user(r["prompt"])
        assert isinstance(r["label"], float) and 0.0 <= r["label"] <= 1.0
        for col in ("score_chosen", "score_rejected"):
            assert r[col] is None or isinstance(r[col], float)


def test_ratings_fixture_normalizes_to_schema() -> None:
    data = load_preferences(fixture("ratings.csv"))
    assert (data.kind, data.format) == ("ratings", "ratings")
    ds = data.dataset
    assert ds.column_names == RATING_COLUMNS
    assert ds.features == ratings_features(ATTRIBUTES)
    assert len(ds) == 12
    for r in ds:
        assert isinstance(r["prompt"], str) and isinstance(r["response"], str) and r["subset"] == ""
        assert r["prompt_messages"] == [user(r["prompt"])]
        assert all(isinstance(r[a], float) for a in ATTRIBUTES)
    # row 8 has no correctness rating: NaN, the others are kept
    assert math.isnan(ds[8]["correctness"]) and ds[8]["helpfulness"] == 4.0
    assert sum(math.isnan(r["correctness"]) for r in ds) == 1
    # a response with a comma, quotes and a newline survives the CSV round trip
    assert ds[5]["response"] == 'Turn off lights, "use less", and, well, think about it.'
    assert "\n" in ds[6]["response"]


def test_battles_fixture_normalizes_to_schema() -> None:
    data = load_preferences(fixture("battles.jsonl"))
    assert (data.kind, data.format) == ("battles", "battles")
    ds = data.dataset
    assert ds.column_names == BATTLE_COLUMNS
    assert ds.features == BATTLES_FEATURES
    assert len(ds) == 12
    texts = [c for c in BATTLE_COLUMNS if c not in ("subset", "prompt_messages")]
    assert all(isinstance(r[c], str) and r[c] for r in ds for c in texts)
    assert all(r["prompt_messages"] == [user(r["prompt"])] for r in ds)
    assert ds["winner"].count("tie") == 3 and ds["winner"].count("tie (bothbad)") == 2
    assert ds[0] == {
        "prompt": "What is a good name for a goldfish?",
        "prompt_messages": [user("What is a good name for a goldfish?")],
        "model_a": "tiny-chat-a",
        "model_b": "tiny-chat-b",
        "winner": "model_b",
        "judge": "rater-1",
        "response_a": "Bubbles",
        "response_b": "Sir Swims-a-Lot",
        "subset": "",
    }


def test_parquet_equals_jsonl(parquet_pairs: Path) -> None:
    from_jsonl = load_preferences(fixture("pairs.jsonl")).dataset
    from_parquet = load_preferences(str(parquet_pairs)).dataset
    assert from_parquet.to_list() == from_jsonl.to_list()


# -- HH transcripts ----------------------------------------------------------------------------


def test_split_hh_transcript_by_hand() -> None:
    text = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Any plans?\n\nAssistant: A walk.\n\nThen tea."
    assert split_hh_transcript(text) == (
        [user("Hi there"), assistant("Hello!"), user("Any plans?")],
        "A walk.\n\nThen tea.",
    )
    assert split_hh_transcript("Human: q\n\nAssistant: a") == ([user("q")], "a")
    with pytest.raises(RowError, match="not an HH transcript"):
        split_hh_transcript("just some text")
    with pytest.raises(RowError, match="not an HH transcript"):
        split_hh_transcript("Preamble\n\nHuman: q\n\nAssistant: a")


def test_hh_fixture_split_hand_checked() -> None:
    ds = load_preferences(fixture("hh.jsonl")).dataset
    assert ds[0]["prompt"] == "How long should I boil an egg for a soft yolk?"
    assert ds[0]["prompt_messages"] == [user("How long should I boil an egg for a soft yolk?")]
    assert ds[0]["chosen"].startswith("About six minutes") and ds[0]["rejected"] == "Eggs are a good source of protein."
    # multi-turn, and a response that itself contains a blank line
    assert ds[8]["prompt"] == "How long should each session be?"
    assert ds[8]["prompt_messages"] == [
        user("I want to start running. Any advice?"),
        assistant("Start with short run-walk intervals three times a week and build up slowly."),
        user("How long should each session be?"),
    ]
    assert ds[8]["chosen"] == (
        "Twenty to thirty minutes is plenty at first.\n\nInclude a five-minute warm-up walk before you start running."
    )
    assert ds[8]["rejected"] == "Run for two hours every day from the start."
    assert len(ds[9]["prompt_messages"]) == 5 and ds[9]["prompt"] == "Do I need day-old rice?"
    assert ds[9]["prompt_messages"][3] == assistant("Peas, carrots, spring onions and peppers all work well.")
    # transcript stored without the leading blank line
    assert ds[11]["prompt_messages"] == [user("What is a good houseplant for a dark room?")]
    assert (ds[11]["chosen"], ds[11]["rejected"]) == ("A ZZ plant copes well with low light.", "A cactus.")


def test_same_content_in_three_formats_normalizes_the_same() -> None:
    pairs = load_preferences(fixture("pairs.jsonl")).dataset
    hh = load_preferences(fixture("hh.jsonl")).dataset
    chat = load_preferences(fixture("chat.jsonl")).dataset
    shared = triples(pairs.select(range(8)))
    assert triples(hh.select(range(8))) == shared
    assert triples(chat.select(range(8))) == shared
    assert triples(hh.select([8])) == triples(chat.select([8]))  # multi-turn conversation
    # the chat copy of hh row 9 starts with a system message; the rest is the same
    assert chat[9]["prompt_messages"][0]["role"] == "system"
    assert chat[9]["prompt_messages"][1:] == hh[9]["prompt_messages"]
    assert (chat[9]["chosen"], chat[9]["rejected"]) == (hh[9]["chosen"], hh[9]["rejected"])
    assert (chat[0]["score_chosen"], chat[0]["score_rejected"]) == (8.5, 3.0)
    assert chat[10]["score_rejected"] is None


def test_ties_and_soft_labels_are_kept() -> None:
    data = load_preferences(fixture("pairs.jsonl"))
    assert data.dataset["label"] == [1.0] * 8 + [0.8, 0.5, 0.5, 0.3, 1.0]
    labels = summarize(data)["labels"]
    assert labels["chosen_wins"] == pytest.approx(9 / 13)
    assert labels["tie"] == pytest.approx(2 / 13)
    assert labels["soft"] == pytest.approx(2 / 13)
    assert labels["rejected_wins"] == 0.0
    assert labels["mean"] == pytest.approx((9 + 0.8 + 1.0 + 0.3) / 13)


def test_preference_column_is_a_soft_label(tmp_path: Path) -> None:
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b", "preference": 0.25}]
    assert load_preferences(write_jsonl(tmp_path / "x.jsonl", rows)).dataset["label"] == [0.25]


def test_csv_pairs_with_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,chosen,rejected,subset,source\nq,a,b,,\nq2,,b,,\n", encoding="utf-8")
    data = load_preferences(str(path), skip_invalid=True)
    assert data.dataset[0] == {
        "prompt": "q",
        "prompt_messages": [user("q")],
        "chosen": "a",
        "rejected": "b",
        "label": 1.0,
        "subset": "",
        "source": "",
        "score_chosen": None,
        "score_rejected": None,
    }
    assert [(p.row, p.field, p.reason) for p in data.problems] == [(1, "chosen", "missing field")]


# -- invalid rows ------------------------------------------------------------------------------

BAD_PAIRS = [
    (1, "chosen", "empty response"),
    (2, "rejected", "missing field"),
    (3, "rejected", "identical to chosen"),
    (4, "label", "label out of [0, 1]"),
    (6, "chosen", "wrong type"),
    (7, "rejected", "empty response"),
    (9, "label", "wrong type"),
]


def test_bad_rows_are_reported_with_row_and_field() -> None:
    source = fixture("bad_pairs.jsonl")
    with pytest.raises(InvalidDataError) as info:
        load_preferences(source)
    exc = info.value
    assert isinstance(exc, DataError)
    assert [(p.row, p.field, p.reason) for p in exc.problems] == BAD_PAIRS
    assert all(p.file == source for p in exc.problems)
    message = str(exc)
    assert "\n" not in message
    assert message.startswith(f"{source}: 7 invalid rows (")
    assert "first: row 1, field 'chosen': empty response" in message
    assert "skip_invalid=True" in message
    assert exc.problems[5].describe() == "row 7, field 'rejected': empty response"
    assert "got int 42" in exc.problems[4].detail


def test_skip_invalid_drops_exactly_the_bad_rows(caplog: pytest.LogCaptureFixture) -> None:
    source = fixture("bad_pairs.jsonl")
    raw = [json.loads(line) for line in Path(source).read_text().splitlines()]
    with caplog.at_level(logging.WARNING, logger="prefgame.data"):
        data = load_preferences(source, skip_invalid=True)
    good = [i for i in range(len(raw)) if i not in {row for row, _, _ in BAD_PAIRS}]
    assert data.dataset["prompt"] == [raw[i]["prompt"] for i in good]
    assert [(p.row, p.field, p.reason) for p in data.problems] == BAD_PAIRS
    assert f"{source}: dropped 7 of 12 rows as invalid (2 empty response, 2 wrong type," in caplog.text
    summary = summarize(data)
    assert (summary["rows"], summary["invalid_rows"]) == (5, 7)
    assert summary["problems"] == {
        "empty response": 2,
        "wrong type": 2,
        "missing field": 1,
        "identical to chosen": 1,
        "label out of [0, 1]": 1,
    }


def _hh(*turns: str) -> str:
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


OTHER_BAD_ROWS = [
    # (rows; the expected (row, field, reason) of the one bad row, which is the last)
    (
        [{"chosen": _hh("q", "a"), "rejected": _hh("other q", "b")}],
        ("rejected", "prompt differs from chosen"),
    ),
    ([{"chosen": _hh("q", "a"), "rejected": "\n\nHuman: q"}], ("rejected", "not an HH transcript")),
    ([{"chosen": _hh("q", "a"), "rejected": _hh("q", "  ")}], ("rejected", "empty response")),
    (
        [{"prompt": "q", "chosen": [user("q"), assistant("a")], "rejected": [user("q"), user("b")]}],
        ("rejected", "no final assistant turn"),
    ),
    (
        [{"prompt": "q", "chosen": [user("q"), assistant("a")], "rejected": "b"}],
        ("rejected", "wrong type"),
    ),
    (
        [{"prompt": "q", "model_a": "m1", "model_b": "m2", "winner": "a", "judge": "j"}],
        ("winner", "unknown winner"),
    ),
    (
        [{"prompt": "q", "model_a": "m1", "model_b": "m1", "winner": "tie", "judge": "j"}],
        ("model_b", "same model on both sides"),
    ),
    ([{"prompt": "q", "response": "r", "helpfulness": "high"}], ("helpfulness", "wrong type")),
    ([{"prompt": "q", "response": "r", "helpfulness": None}], ("ratings", "no ratings")),
    ([{"prompt": 3, "chosen": "a", "rejected": "b", "label": 0.5}], ("prompt", "wrong type")),
    ([{"prompt": "q", "chosen": "a", "rejected": "b", "label": None}], ("label", "missing field")),
]


@pytest.mark.parametrize("bad_rows, expected", OTHER_BAD_ROWS)
def test_other_bad_rows(tmp_path: Path, bad_rows: list[dict], expected: tuple[str, str]) -> None:
    good_rows = [_fix(bad_rows[0])] * 2
    path = write_jsonl(tmp_path / "data.jsonl", good_rows + bad_rows)
    with pytest.raises(InvalidDataError) as info:
        load_preferences(path)
    assert [(p.row, p.field, p.reason) for p in info.value.problems] == [(2, *expected)]
    assert len(load_preferences(path, skip_invalid=True).dataset) == 2


def _fix(row: dict) -> dict:
    """A valid row with the same columns (and column types) as ``row``."""
    if "model_a" in row:
        return {"prompt": "q", "model_a": "m1", "model_b": "m2", "winner": "tie", "judge": "j"}
    if "response" in row:
        return {"prompt": "q", "response": "r", "helpfulness": 3.0}
    if "prompt" in row and isinstance(row["chosen"], list):
        return {"prompt": "q", "chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("b")]}
    if "prompt" in row:
        return {"prompt": "q", "chosen": "a", "rejected": "b", "label": 0.5}
    return {"chosen": _hh("q", "a"), "rejected": _hh("q", "b")}


def test_malformed_jsonl_reports_line_number() -> None:
    source = fixture("malformed.jsonl")
    for skip_invalid in (False, True):  # the datasets JSON reader cannot skip a broken line
        with pytest.raises(InvalidDataError) as info:
            load_preferences(source, skip_invalid=skip_invalid)
        assert [(p.line, p.reason) for p in info.value.problems] == [(3, "malformed JSON")]
        assert str(info.value).startswith(f"{source}: 1 malformed JSON line")
        assert "line 3: malformed JSON" in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_preferences(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="file not found"):
        load_preferences("data/nested/train.jsonl")
    with pytest.raises(DataError, match="unknown data format 'dpo'"):
        load_preferences(fixture("pairs.jsonl"), format="dpo")
    with pytest.raises(DataError, match="format 'battles' needs the column"):
        load_preferences(fixture("pairs.jsonl"), format="battles")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="unsupported file type"):
        load_preferences(str(tmp_path / "x.txt"))


def test_looks_like_hub_name() -> None:
    assert looks_like_hub_name("Anthropic/hh-rlhf")
    assert looks_like_hub_name("nvidia/HelpSteer2")
    assert not looks_like_hub_name("data/train.jsonl")
    assert not looks_like_hub_name("./data")
    assert not looks_like_hub_name("a/b/c")


def test_detect_format() -> None:
    assert detect_format(["prompt", "chosen", "rejected"], {"chosen": "a"}) == "pairs"
    assert detect_format(["chosen", "rejected"], {"chosen": "\n\nHuman: q\n\nAssistant: a"}) == "hh"
    assert detect_format(["prompt", "chosen", "rejected"], {"chosen": "Human: q\n\nAssistant: a"}) == "hh"
    assert detect_format(["prompt", "chosen", "rejected"], {"chosen": [assistant("a")]}) == "chat"
    assert detect_format(["prompt", "response", "helpfulness"], {}) == "ratings"
    assert detect_format(["model_a", "model_b", "winner", "judge", "prompt"], {}) == "battles"
    with pytest.raises(DataError, match="cannot tell the data format"):
        detect_format(["text"], {"text": "x"})


def test_format_override_reads_pairs_as_chat_fails_per_row() -> None:
    with pytest.raises(InvalidDataError) as info:
        load_preferences(fixture("pairs.jsonl"), format="chat")
    assert len(info.value.problems) == 13 and info.value.problems[0].reason == "wrong type"


def test_arena_conversations_become_battles(tmp_path: Path) -> None:
    row = {
        "model_a": "m1",
        "model_b": "m2",
        "winner": "model_a",
        "judge": "arena_user_1",
        "conversation_a": [user("hi"), assistant("hello"), user("bye"), assistant("see you")],
        "conversation_b": [user("hi"), assistant("hello"), user("bye"), assistant("ok")],
    }
    ds = load_preferences(write_jsonl(tmp_path / "arena.jsonl", [row])).dataset
    assert ds[0] == {
        "prompt": "bye",
        "prompt_messages": [user("hi"), assistant("hello"), user("bye")],  # the whole history
        "model_a": "m1",
        "model_b": "m2",
        "winner": "model_a",
        "judge": "arena_user_1",
        "response_a": "see you",
        "response_b": "ok",
        "subset": "",
    }


# -- summary -----------------------------------------------------------------------------------


def test_summary_of_battles_and_ratings() -> None:
    battles = summarize(load_preferences(fixture("battles.jsonl")))
    assert battles["winners"] == pytest.approx(
        {"model_a": 5 / 12, "model_b": 2 / 12, "tie": 3 / 12, "tie (bothbad)": 2 / 12}
    )
    assert battles["lengths"]["response_a"]["chars"]["max"] == len(
        "Tuck the corners into each other, lay it flat, then fold it into a rectangle."
    )
    ratings = summarize(load_preferences(fixture("ratings.csv")))
    assert ratings["attributes"]["helpfulness"] == {"mean": pytest.approx(30 / 12), "missing": 0}
    assert ratings["attributes"]["correctness"] == {"mean": pytest.approx(30 / 11), "missing": 1}
    words = ratings["lengths"]["prompt"]["words"]
    assert words["max"] == len("Write a short note thanking a neighbor for watering my plants.".split())


# -- chat template helper ----------------------------------------------------------------------


def test_apply_chat_template_or_plain() -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    messages = [{"role": "system", "content": "Be brief."}, user("How long should I boil an egg?")]
    plain = "System: Be brief.\n\nUser: How long should I boil an egg?\n\nAssistant:"
    assert apply_chat_template_or_plain(None, messages) == plain
    assert apply_chat_template_or_plain(None, messages, add_generation_prompt=False) == plain[: -len("\n\nAssistant:")]

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    assert apply_chat_template_or_plain(tokenizer, messages) == plain  # no template yet: fallback
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    expected = "<|system|>Be brief.\n<|user|>How long should I boil an egg?\n<|assistant|>"
    assert apply_chat_template_or_plain(tokenizer, messages) == expected


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_validate_prints_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["data", "validate", fixture("hh.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "format    hh (kind: pairs)" in out
    assert "rows      12 valid, 0 invalid dropped" in out
    assert "chosen_wins 100.0%" in out and "problems  none" in out

    assert cli_main(["data", "validate", fixture("battles.jsonl"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "battles" and summary["rows"] == 12


def test_cli_validate_bad_data_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    source = fixture("bad_pairs.jsonl")
    assert cli_main(["data", "validate", source]) == 2
    captured = capsys.readouterr()
    err_lines = captured.err.strip().splitlines()
    assert err_lines[0] == "7 problems (rows are 0-based indexes into the split):"
    for (row, field, reason), line in zip(BAD_PAIRS, err_lines[1:8], strict=True):
        assert line.startswith(f"  row {row}, field '{field}': {reason}")
    assert err_lines[-1].startswith(f"prefgame data: error: {source}: 7 invalid rows")
    assert captured.out == ""

    assert cli_main(["data", "validate", source, "--skip-invalid"]) == 0
    captured = capsys.readouterr()
    assert "rows      5 valid, 7 invalid dropped" in captured.out
    assert "dropped 7 invalid rows (rows are 0-based" in captured.err


def test_cli_validate_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "prefgame", "data", "validate", fixture("ratings.csv"), "--split", "dev"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "format    ratings (kind: ratings)" in result.stdout
    assert "correctness" in result.stdout and "(1)" in result.stdout


# -- K-way rankings ---------------------------------------------------------------------------------


def test_ultrafeedback_fixture_loads_as_four_way_rankings() -> None:
    """UltraFeedback's raw rows (instruction, completions with overall_score / fine-grained_score, extra
    fields) read as rankings: four responses in input order, scores from overall_score (the first score key)."""
    source = fixture("ultrafeedback.jsonl")
    raw = [json.loads(line) for line in Path(source).read_text().splitlines()]
    data = load_preferences(source)
    assert (data.kind, data.format, len(data.dataset)) == ("rankings", "rankings", len(raw))
    assert data.dataset.features == RANKINGS_FEATURES
    row = data.dataset[0]
    assert row["prompt"] == raw[0]["instruction"]
    assert row["prompt_messages"] == [{"role": "user", "content": raw[0]["instruction"]}]
    assert row["responses"] == [c["response"] for c in raw[0]["completions"]]
    assert row["scores"] == [c["overall_score"] for c in raw[0]["completions"]]
    assert row["source"] == "fixture"
    summary = summarize(data)["rankings"]
    # one partial tie in row 3 (two completions share an overall score): 1 of 36·6 pairs
    assert (summary["k_min"], summary["k_max"], summary["all_tied"]) == (4, 4, 0.0)
    assert summary["tied_pairs"] == pytest.approx(1 / (36 * 6))


def test_rankings_from_responses_with_scores_or_a_ranking(tmp_path: Path) -> None:
    """``responses`` + ``scores``, or + ``ranking`` (positions best first → scores K − position)."""
    path = tmp_path / "r.jsonl"
    rows = [
        {"prompt": "p1", "responses": ["a", "b", "c"], "scores": [1, 3, 2]},
        {"prompt": "p2", "responses": ["a", "b"], "scores": ["0.5", 2]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = load_preferences(str(path))
    assert data.dataset["scores"] == [[1.0, 3.0, 2.0], [0.5, 2.0]]
    path.write_text(json.dumps({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}))
    data = load_preferences(str(path))
    assert data.dataset["scores"] == [[2.0, 1.0, 3.0]]  # c first (3), a second (2), b last (1)
    from prefgame.data.columns import load_rankings

    ranked = load_rankings(str(path), "train", skip_invalid=False)
    assert ranked.responses == [["c", "a", "b"]] and ranked.scores[0].tolist() == [3.0, 2.0, 1.0]
    pairs = ranked.pairs("all")
    assert list(zip(pairs.chosen, pairs.rejected)) == [("c", "a"), ("c", "b"), ("a", "b")]
    assert pairs.margins.tolist() == [1.0, 2.0, 1.0] and pairs.labels.tolist() == [1.0, 1.0, 1.0]
    assert (ranked.pairs("best_worst").chosen, ranked.pairs("best_worst").rejected) == (["c"], ["b"])


def _completion(text, score):
    return {"response": text, "overall_score": score}


BAD_RANKINGS = [
    # (row, completions or responses fields, expected (field, reason))
    ({"instruction": "q", "completions": [_completion("a", 2.0), {"response": "b", "overall_score": None}]},
     ("completions[1].score", "missing score")),
    ({"instruction": "q", "completions": [_completion("a", 2.0), _completion("  ", 1.0)]},
     ("completions[1].response", "empty response")),
    ({"instruction": "q", "completions": [_completion("a", 2.0)]}, ("completions", "fewer than 2 responses")),
    ({"instruction": "q", "completions": [_completion("a", 2.0), _completion("a ", 1.0)]},
     ("completions[1]", "duplicate response")),
    ({"instruction": "", "completions": [_completion("a", 2.0), _completion("b", 1.0)]}, ("instruction", "empty text")),
]  # fmt: skip


def test_bad_ranking_rows_are_reported_with_row_and_field(tmp_path: Path) -> None:
    good = {"instruction": "q", "completions": [_completion("a", 2.0), _completion("b", 1.0)]}
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [good] + [row for row, _ in BAD_RANKINGS]))
    with pytest.raises(InvalidDataError) as info:
        load_preferences(str(path))
    problems = info.value.problems
    assert [(p.row, p.field, p.reason) for p in problems] == [
        (i + 1, field, reason) for i, (_, (field, reason)) in enumerate(BAD_RANKINGS)
    ]
    message = str(info.value)
    assert "\n" not in message
    assert "first: row 1, field 'completions[1].score': missing score" in message
    assert len(load_preferences(str(path), skip_invalid=True).dataset) == 1
    for rows, (field, reason) in [
        ([{"prompt": "q", "responses": ["a", "b"], "scores": [1.0]}], ("scores", "wrong length")),
        ([{"prompt": "q", "responses": ["a", "b"], "ranking": [0, 0]}], ("ranking", "not a ranking")),
        ([{"prompt": "q", "responses": ["a", "b"], "scores": [1.0, None]}], ("scores[1]", "missing score")),
    ]:
        path.write_text(json.dumps(rows[0]))
        with pytest.raises(InvalidDataError) as info:
            load_preferences(str(path))
        assert (info.value.problems[0].field, info.value.problems[0].reason) == (field, reason)
        assert f"row 0, field '{field}': {reason}" in str(info.value)
