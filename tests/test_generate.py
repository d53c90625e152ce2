"""``prefgame generate``: outputs of a tiny random Llama on arena prompts, prompt files and preference data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from prefgame.arena.lm import build_tokenizer, tiny_llama_config
from prefgame.cli import main
from prefgame.config import load_config
from prefgame.errors import PrefgameError
from prefgame.game.lm_sampling import sample_texts
from prefgame.generate import GenerateConfig, load_prompts, run
from prefgame.lm import load_causal_lm, load_tokenizer
from prefgame.run import read_jsonl


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A saved tiny causal LM (random weights) with the arena tokenizer, in a folder named model/."""
    path = tmp_path_factory.mktemp("policy-a") / "model"
    tok = build_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(
        tiny_llama_config(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    ).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def config(model_dir: Path, out: Path, **overrides) -> GenerateConfig:
    keys = {"model": str(model_dir), "prompts": "arena", "max_prompts": 5, "max_new_tokens": 8, "out": str(out)}
    keys.update(overrides)
    return load_config(GenerateConfig, None, [f"{k}={v}" for k, v in keys.items()])


def test_arena_prompts_rows_lengths_and_determinism(model_dir, tmp_path):
    metrics = run(config(model_dir, tmp_path / "a.jsonl", samples_per_prompt=2))
    rows = read_jsonl(tmp_path / "a.jsonl")
    assert len(rows) == 10 and metrics["outputs"] == 10 and metrics["prompts"] == 5
    # the checkpoint folder is called model/: the generator is named after the run folder around it
    assert {r["generator"] for r in rows} == {model_dir.parent.name}
    assert [r["sample"] for r in rows] == [0, 1] * 5
    assert [r["prompt"] for r in rows[::2]] == [r["prompt"] for r in rows[1::2]]
    tok = load_tokenizer(str(model_dir))
    for r in rows:
        keys = "prompt prompt_messages output generator sample prompt_tokens output_tokens output_words"
        assert set(r) == set(keys.split())
        assert r["prompt_messages"] == [{"role": "user", "content": r["prompt"]}]
        assert r["output_tokens"] == len(tok(r["output"], add_special_tokens=False)["input_ids"]) <= 8
        assert r["output_words"] == len(r["output"].split())
    # the same seed gives the same outputs, and they are exactly the sampler's (prefgame's loop, the
    # default engine)
    run(config(model_dir, tmp_path / "b.jsonl", samples_per_prompt=2))
    assert read_jsonl(tmp_path / "b.jsonl") == rows
    prompts = [r["prompt"] for r in rows]
    direct = sample_texts(load_causal_lm(str(model_dir)), tok, prompts, max_new_tokens=8, seed=0, engine="prefgame")
    assert direct == [r["output"] for r in rows]
    assert json.loads((tmp_path / "a.metrics.json").read_text())["mean_output_tokens"] > 0


def test_prompts_from_a_prompt_file_and_from_preference_data(model_dir, tmp_path, arena_dir):
    prompt_file = tmp_path / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["q one", "q two", "q one", "q three"]))
    cfg = config(model_dir, tmp_path / "p.jsonl", prompts=str(prompt_file), field="text", max_prompts=0)
    assert load_prompts(cfg) == ["q one", "q two", "q three"]  # distinct, in file order
    # a pairs file (no 'text' column): the normalized prompts of the preference data
    pairs = config(model_dir, tmp_path / "q.jsonl", prompts=str(arena_dir / "pairs.jsonl"), field="text")
    expected = list(dict.fromkeys(r["prompt"] for r in read_jsonl(arena_dir / "pairs.jsonl")))[:5]
    assert load_prompts(pairs) == expected


def test_cli_and_errors(model_dir, tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    code = main(["generate", f"model={model_dir}", "prompts=arena", "max_prompts=3", "max_new_tokens=4",
                 f"out={out}", "generator=pi0", "temperature=0"])  # fmt: skip
    assert code == 0 and [r["generator"] for r in read_jsonl(out)] == ["pi0"] * 3
    assert "wrote 3 outputs of pi0" in capsys.readouterr().out
    with pytest.raises(PrefgameError, match="generate needs out="):
        run(load_config(GenerateConfig, None, [f"model={model_dir}", "prompts=arena"]))
    assert main(["generate", "model=/no/such/model", "prompts=arena", f"out={tmp_path / 'y.jsonl'}"]) == 2


@pytest.mark.parametrize("engine", ["prefgame", "transformers"])
def test_several_stop_tokens_and_a_stop_string(model_dir, tmp_path, capsys, engine):
    """eos_token_ids and stop end the outputs of either engine: a stop token (an ordinary word here, so its
    text stays, as vLLM keeps it) can only be an output's last word, and no output contains the stop
    string; without them the same model says them. A bad id or an empty stop string is one line and exit
    code 2."""
    tok = load_tokenizer(str(model_dir))
    words = {"music", "travel", "garden", "cooking"}
    ids = [tok.convert_tokens_to_ids(w) for w in sorted(words)]
    overrides = dict(samples_per_prompt=4, max_new_tokens=24, engine=engine, stop="[' the']",
                     eos_token_ids="[" + ",".join(map(str, ids)) + "]", max_prompts=10)  # fmt: skip
    run(config(model_dir, tmp_path / "s.jsonl", **overrides))
    run(config(model_dir, tmp_path / "p.jsonl", **dict(overrides, stop="[]", eos_token_ids="[]")))
    outputs = [r["output"].split() for r in read_jsonl(tmp_path / "s.jsonl")]
    assert not any(" the" in " ".join(o) for o in outputs)
    assert not any(set(o[:-1]) & words for o in outputs) and any(o and o[-1] in words for o in outputs)
    unstopped = [r["output"].split() for r in read_jsonl(tmp_path / "p.jsonl")]
    assert any(" the" in " ".join(o) or set(o[:-1]) & words for o in unstopped)
    capsys.readouterr()
    args = ["generate", f"model={model_dir}", "prompts=arena", f"out={tmp_path / 'x.jsonl'}"]
    bad = main([*args, "eos_token_ids=[9999]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert bad == 2 and len(err) == 1 and "eos_token_ids: 9999 is not a token id" in err[0]
    assert main([*args, "stop=['']"]) == 2


class _WordCounter:
    """A constructed best-of-n scorer: the reward is the output's word count (ties: the first sample)."""

    name, has_reward = "words", True

    def reward(self, prompts, responses):
        return torch.tensor([float(len(r.split())) for r in responses])


def test_best_of_n_keeps_the_scorers_argmax_and_reports_its_kl(model_dir, tmp_path, monkeypatch):
    import math

    import prefgame.generate as generate

    monkeypatch.setattr(generate, "load_scorer", lambda cfg: _WordCounter())
    metrics = run(config(model_dir, tmp_path / "best.jsonl", **{"best_of_n.n": 4, "best_of_n.scorer": "x"}))
    best = read_jsonl(tmp_path / "best.jsonl")
    # the same seed samples the same 4 candidates per prompt as plain generation of 4 samples per prompt
    run(config(model_dir, tmp_path / "all.jsonl", samples_per_prompt=4))
    pool = read_jsonl(tmp_path / "all.jsonl")
    assert len(best) == 5 and all(r["best_of_n"] == 4 for r in best)
    for k, row in enumerate(best):
        group = [r["output"] for r in pool[4 * k : 4 * k + 4]]
        words = [len(g.split()) for g in group]
        assert row["prompt"] == pool[4 * k]["prompt"]
        assert row["output"] == group[words.index(max(words))] and row["score"] == max(words)
    assert metrics["best_of_n"] == 4 and metrics["kl_to_sampled_model"] == pytest.approx(math.log(4) - 3 / 4)
    # n = 1 is plain generation: the same rows, no scorer loaded, no best-of-n metrics
    monkeypatch.setattr(generate, "load_scorer", lambda cfg: pytest.fail("n = 1 loads no scorer"))
    one = run(config(model_dir, tmp_path / "one.jsonl", **{"best_of_n.n": 1, "best_of_n.scorer": "x"}))
    run(config(model_dir, tmp_path / "plain.jsonl"))
    assert read_jsonl(tmp_path / "one.jsonl") == read_jsonl(tmp_path / "plain.jsonl")
    assert "kl_to_sampled_model" not in one


def test_best_of_n_under_a_general_preference_model_ranks_by_mean_win_probability():
    from prefgame.generate import candidate_scores

    class Pairwise:  # P(y_i ≻ y_j) = σ(len_i − len_j)
        has_reward = False

        def preference_matrix(self, prompt, responses):
            n = torch.tensor([float(len(r)) for r in responses])
            return torch.sigmoid(n[:, None] - n[None, :]).double()

    scores, wins = candidate_scores(Pairwise(), "x", ["aa", "a", "aaaa", "aaa"])
    torch.testing.assert_close(scores, wins.mean(1))
    assert int(scores.argmax()) == 2  # the longest wins on average


def test_best_of_n_needs_a_scorer(model_dir, tmp_path):
    with pytest.raises(PrefgameError, match="best_of_n.scorer"):
        run(config(model_dir, tmp_path / "x.jsonl", **{"best_of_n.n": 2}))
