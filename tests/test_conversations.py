"""Multi-turn prompts reach every job whole.

Every job that reads prompts (sft, train-pm, score, offline and online DPO, self-play, PPO, generate)
is run on three-turn conversations (user, assistant, user, then the response) read from the formats
that load (HH transcripts, UltraFeedback-style message lists, HelpSteer-style ratings, Arena
battles, plain prompt files). A spy on the Llama trunk records the token ids every model is given:
the chat template applied to the whole message list must be among them. A spy on the tokenizer
checks that no text it is given is the ``str()`` of a message list, and oracles must receive the
conversation's text with every turn and its role (:func:`prefgame.data.chat.conversation_text`).
"""

from __future__ import annotations

import copy
import json
import pickle
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaForCausalLM, LlamaModel, PreTrainedTokenizerBase

from prefgame.arena.lm import build_tokenizer, new_tiny_model, tiny_llama_config
from prefgame.arena.world import TOPIC_FACTS, TOPICS
from prefgame.cli import main
from prefgame.data.chat import Conversation, as_prompt, conversation_text, messages_of
from prefgame.data.columns import load_pairs, load_prompts, load_ratings, read_prompts
from prefgame.errors import DataError
from prefgame.lm import encode_prompt, encode_response, prompt_text
from prefgame.run import read_jsonl, write_jsonl
from prefgame.train.sft import save_model

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
TINY_LM = [f"{k}={v}" for k, v in TINY.items()]
OPTIM = ["train.lr=1e-3", "train.warmup_steps=0", "train.mixed_precision=no"]  # every trainer's keys
TRAIN = [*OPTIM, "train.log_every=1", "train.save_every=0"]  # and those of sft, train-pm and dpo


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def conversations() -> list[tuple[list[dict[str, str]], str, str]]:
    """(history, chosen, rejected) for every ordered pair of arena topics: three turns before the
    response, in arena words (no unknown tokens)."""
    out = []
    for a in TOPICS:
        for b in TOPICS:
            if a != b:
                history = [user(f"tell me about {a}"), assistant(TOPIC_FACTS[a][0]), user(f"what about {b} ?")]
                out.append((history, TOPIC_FACTS[b][0], TOPIC_FACTS[b][1]))
    return out


CONVERSATIONS = conversations()
# the ratings' conversations differ in their last turn, so that a test can tell which data a model read
RATED = [([*h[:2], user(h[2]["content"].replace("what about", "explain").replace("?", "in detail"))], c, r)
         for h, c, r in CONVERSATIONS]  # fmt: skip


def hh(history: list[dict[str, str]], response: str) -> str:
    names = {"user": "Human", "assistant": "Assistant"}
    return "".join(f"\n\n{names[m['role']]}: {m['content']}" for m in history) + f"\n\nAssistant: {response}"


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def pi0_dir(tmp_path_factory) -> Path:
    """A saved tiny π0 (random weights, 2 layers) with the arena tokenizer (which has a chat template);
    the folder is also the tokenizer of the jobs that build a new model."""
    path = tmp_path_factory.mktemp("pi0") / "model"
    save_model(*new_tiny_model(LlamaForCausalLM, SimpleNamespace(tokenizer="", **TINY), seed=0), path)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The conversations in every format: UltraFeedback-style message lists (chat), HH transcripts,
    pairs with a message-list prompt, HelpSteer-style ratings with a message-list prompt, Arena
    battles, and a plain prompt file whose column holds message lists."""
    d = tmp_path_factory.mktemp("conversations")
    rows = CONVERSATIONS
    write_jsonl(d / "chat.jsonl", [
        {"prompt": h[-1]["content"], "chosen": [*h, assistant(c)], "rejected": [*h, assistant(r)]} for h, c, r in rows
    ])  # fmt: skip
    write_jsonl(d / "hh.jsonl", [{"chosen": hh(h, c), "rejected": hh(h, r)} for h, c, r in rows])
    write_jsonl(d / "pairs.jsonl", [{"prompt": h, "chosen": c, "rejected": r} for h, c, r in rows])
    write_jsonl(d / "ratings.jsonl", [
        {"prompt": h, "response": y, "helpfulness": s} for h, c, r in RATED for y, s in ((c, 4), (r, 1))
    ])  # fmt: skip
    write_jsonl(d / "battles.jsonl", [
        {"model_a": "m1", "model_b": "m2", "winner": "model_a", "conversation_a": [*h, assistant(c)],
         "conversation_b": [*h, assistant(r)]}
        for h, c, r in rows
    ])  # fmt: skip
    write_jsonl(d / "prompts.jsonl", [{"messages": h} for h, _, _ in rows])
    write_jsonl(d / "sft_messages.jsonl", [{"messages": [*h, assistant(c)]} for h, c, _ in rows])
    write_jsonl(d / "sft_prompts.jsonl", [{"prompt": h, "response": c} for h, c, _ in rows])
    return d


class Seen:
    """What the models and tokenizers were given while the spy was on."""

    def __init__(self) -> None:
        # (layers of the model, token ids without padding); layers None: ids an embedding was given (with padding)
        self.rows: list[tuple[int | None, list[int]]] = []
        self.texts: list[str] = []

    def saw(self, ids: list[int], *, layers: int | None = None) -> bool:
        """``ids`` appear, contiguous, in a sequence given to a model (with ``layers`` layers)."""
        n = len(ids)
        return any(
            row[i : i + n] == ids
            for depth, row in self.rows
            if layers is None or depth == layers
            for i in range(len(row) - n + 1)
        )

    def assert_no_message_list_text(self) -> None:
        bad = [t for t in self.texts if "'role'" in t or '"role"' in t]
        assert not bad, f"the str() of a message list was tokenized: {bad[0][:80]!r}"


@pytest.fixture
def seen(monkeypatch) -> Seen:
    record = Seen()
    forward, call, embed = LlamaModel.forward, PreTrainedTokenizerBase.__call__, torch.nn.Embedding.forward

    def spy_forward(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if ids is not None:
            for b in range(ids.shape[0]):
                row = ids[b][mask[b].bool()] if mask is not None and mask.shape == ids.shape else ids[b]
                record.rows.append((self.config.num_hidden_layers, row.tolist()))
        return forward(self, *args, **kwargs)

    def spy_call(self, text=None, *args, **kwargs):
        record.texts += [text] if isinstance(text, str) else [t for t in (text or []) if isinstance(t, str)]
        return call(self, text, *args, **kwargs)

    def spy_embed(self, ids):
        # the sampler's static-cache decoder embeds the prompts itself, without the trunk's forward (the rows
        # keep their left padding; the depth of the model is unknown here)
        if ids.dim() == 2 and not torch.is_floating_point(ids):
            record.rows += [(None, row) for row in ids.tolist()]
        return embed(self, ids)

    monkeypatch.setattr(LlamaModel, "forward", spy_forward)
    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", spy_call)
    monkeypatch.setattr(torch.nn.Embedding, "forward", spy_embed)
    yield record
    record.assert_no_message_list_text()


def history_ids(tok, history: list[dict[str, str]]) -> list[int]:
    """The chat template applied to the whole history, with the generation prompt, as token ids."""
    text = tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    return ids


def saw_a_whole_conversation(
    seen: Seen, tok, *, response: bool = False, layers: int | None = None, rows=CONVERSATIONS
) -> bool:
    """Some model was given a whole history of ``rows`` (followed by its chosen response when ``response``)."""
    return any(
        seen.saw(history_ids(tok, h) + (encode_response(tok, c) if response else []), layers=layers) for h, c, _ in rows
    )


class RecordingOracle:
    """A preference oracle that keeps the prompts it is asked about (P = ½ + a length preference)."""

    name = "recording"

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def preference(self, prompts, responses_a, responses_b) -> torch.Tensor:
        self.prompts += list(prompts)
        diff = torch.tensor([len(a) - len(b) for a, b in zip(responses_a, responses_b)], dtype=torch.float64)
        return 0.5 + 0.4 * torch.tanh(diff / 10)


@pytest.fixture
def oracle(monkeypatch) -> RecordingOracle:
    """``oracle.kind=factory oracle.factory=conversation_oracle:build`` builds this oracle."""
    instance = RecordingOracle()
    module = types.ModuleType("conversation_oracle")
    module.build = lambda path, **options: instance
    monkeypatch.setitem(sys.modules, "conversation_oracle", module)
    return instance


def assert_oracle_read_conversations(oracle: RecordingOracle) -> None:
    texts = {conversation_text(h) for h, _, _ in CONVERSATIONS}
    assert oracle.prompts and set(oracle.prompts) <= texts  # every turn, roles kept
    assert all(isinstance(p, Conversation) for p in oracle.prompts)  # a model oracle reads the messages
    assert "User: tell me about" in oracle.prompts[0] and "\n\nAssistant: " in oracle.prompts[0]


ORACLE = ["oracle.kind=factory", "oracle.factory=conversation_oracle:build"]


# ---------------------------------------------------------------------------------------------- the prompt


def test_a_conversation_is_its_text_and_keeps_its_messages() -> None:
    history = CONVERSATIONS[0][0]
    prompt = as_prompt(history)
    assert isinstance(prompt, Conversation) and prompt.messages == history and messages_of(prompt) == history
    assert (
        prompt
        == conversation_text(history)
        == ("User: tell me about cooking\n\nAssistant: cooking needs fresh herbs\n\nUser: what about travel ?")
    )
    for copied in (pickle.loads(pickle.dumps(prompt)), copy.deepcopy(prompt)):
        assert isinstance(copied, Conversation) and copied.messages == history
    assert json.loads(json.dumps({"prompt": prompt})) == {"prompt": str(prompt)}
    # one user turn is plain text, the same prompt as a text field gives
    assert as_prompt([user("hi")]) == "hi" and type(as_prompt([user("hi")])) is str
    assert messages_of("hi") == [user("hi")]
    system = as_prompt([{"role": "system", "content": "be brief"}, user("hi")])
    assert system == "System: be brief\n\nUser: hi" and isinstance(system, Conversation)


def test_encode_prompt_applies_the_template_to_every_turn(tok) -> None:
    history = CONVERSATIONS[0][0]
    prompt = as_prompt(history)
    assert prompt_text(tok, prompt) == tok.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    assert encode_prompt(tok, prompt) == encode_prompt(tok, history) == history_ids(tok, history)
    plain = build_tokenizer()
    plain.chat_template = None  # no template: one "role: content" line per turn
    assert prompt_text(plain, prompt) == (
        "user: tell me about cooking\nassistant: cooking needs fresh herbs\nuser: what about travel ?\nassistant:"
    )
    assert prompt_text(plain, "hi") == "user: hi\nassistant:"


@pytest.mark.parametrize("layout", ["chat", "plain", "pair"])
def test_preference_model_encoder_reads_the_whole_history(layout: str) -> None:
    from prefgame.models.backbone import TextEncoder

    tok = build_tokenizer()
    tok.cls_token, tok.sep_token = "<bos>", "<eos>"  # for the pair layout
    model = LlamaModel(tiny_llama_config(tok, **TINY))
    encoder = TextEncoder(model, tok, text_format=layout, max_length=96)
    history, chosen, _ = CONVERSATIONS[0]
    prompt = as_prompt(history)
    ids = encoder.response_ids(prompt, chosen)
    text = tok.decode(ids)
    for message in history:
        assert message["content"] in text
    if layout == "chat":
        assert ids[: len(history_ids(tok, history))] == history_ids(tok, history)
    # a conversation is not its text read as one user turn (the cache of rendered prompts tells them
    # apart), except in the pair layout, which reads text
    as_text = encoder.prompt_ids(str(prompt))
    assert (encoder.prompt_ids(prompt) == as_text) == (layout == "pair")


# ---------------------------------------------------------------------------------------------- formats


def test_every_format_keeps_the_whole_conversation(data_dir: Path) -> None:
    histories = [h for h, _, _ in CONVERSATIONS]
    for name in ("chat", "hh", "pairs"):
        pairs = load_pairs(str(data_dir / f"{name}.jsonl"), "train", skip_invalid=False)
        assert [p.messages for p in pairs.prompts] == histories, name
        assert pairs.chosen == [c for _, c, _ in CONVERSATIONS]
    ratings = load_ratings(str(data_dir / "ratings.jsonl"), "train", [], skip_invalid=False)
    assert [p.messages for p in ratings.prompts] == [h for h, _, _ in RATED for _ in range(2)]
    for name, field in (("battles", "prompt"), ("hh", "prompt"), ("prompts", "messages"), ("chat", "chosen")):
        prompts = load_prompts(str(data_dir / f"{name}.jsonl"), "train", field)
        assert [p.messages for p in prompts] == histories, name


def test_prompt_fields_take_text_transcripts_and_message_lists() -> None:
    history = CONVERSATIONS[0][0]
    values = [
        "plain text",
        hh(history, "an answer"),  # an HH transcript: the turns before the final answer
        hh(history, "").rstrip(),  # a transcript ending with "Assistant:"
        history,
        [*history, assistant("an answer")],  # a final assistant turn is the response, left out
        None,
        float("nan"),  # an empty CSV cell
        "  ",
    ]
    prompts = read_prompts(values, "prompt", "p.jsonl")
    assert prompts[0] == "plain text" and prompts[5:] == [None, None, None]
    assert all(isinstance(p, Conversation) and p.messages == history for p in prompts[1:5])


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        ([{"role": "user"}], "message 0 is not a {role, content} dict of strings"),
        ([user("hi"), {"role": "user", "content": 3}], "message 1 is not"),
        ([assistant("hello")], "no user turn"),
        ([], "expected a non-empty list of messages"),
        (7, "expected text or a list of messages, got int 7"),
    ],
)
def test_a_malformed_message_list_names_its_row_and_field(tmp_path: Path, value, detail) -> None:
    with pytest.raises(DataError, match=r"row 1, field 'messages'") as err:
        read_prompts([[user("fine")], value], "messages", "p.jsonl")
    assert detail in str(err.value) and "\n" not in str(err.value)
    # the same in a preference file's prompt field, and in the jobs' prompt files
    path = tmp_path / "bad.jsonl"
    write_jsonl(
        path,
        [{"prompt": [user("fine")], "chosen": "a", "rejected": "b"}, {"prompt": value, "chosen": "a", "rejected": "b"}],
    )
    if isinstance(value, list):  # one column type per file: a number next to lists does not load as JSON
        with pytest.raises(DataError, match=r"row 1, field 'prompt'"):
            load_pairs(str(path), "train", skip_invalid=False)
        with pytest.raises(DataError, match=r"row 1, field 'prompt'"):
            load_prompts(str(path), "train", "prompt")


# ---------------------------------------------------------------------------------------------- jobs


@pytest.mark.parametrize(("data", "fields"), [
    ("sft_messages.jsonl", ["data.messages_field=messages"]),
    ("sft_prompts.jsonl", []),  # the prompt field holds message lists
])  # fmt: skip
def test_sft(seen, tok, pi0_dir, data_dir, tmp_path, data, fields) -> None:
    args = [f"data.path={data_dir / data}", *fields, f"model.tokenizer={pi0_dir}", *(f"model.{kv}" for kv in TINY_LM)]
    args += ["data.max_length=64", "data.eval_fraction=0", "train.max_steps=1", "train.batch_size=12", *TRAIN]
    assert main(["sft", *args, f"output_dir={tmp_path / 'sft'}"]) == 0
    assert saw_a_whole_conversation(seen, tok, response=True)


def test_sft_refuses_a_malformed_conversation(pi0_dir, tmp_path, capsys) -> None:
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, [{"prompt": [user("fine")], "response": "ok"}, {"prompt": [{"role": "user"}], "response": "ok"}])
    assert main(["sft", f"data.path={path}", f"model.tokenizer={pi0_dir}", f"output_dir={tmp_path / 'o'}"]) != 0
    err = capsys.readouterr().err
    assert "row 1, field 'prompt'" in err and "message 0 is not a {role, content} dict of strings" in err


@pytest.fixture(scope="module")
def pm_run(tmp_path_factory, pi0_dir, data_dir) -> Path:
    """A BT preference model trained on the chat (UltraFeedback-style) conversations, with the held-out
    evaluation (the PM evaluation) on a quarter of them."""
    out = tmp_path_factory.mktemp("pm") / "run"
    args = [f"data.path={data_dir / 'chat.jsonl'}", "data.eval_fraction=0.25", "model.kind=bt"]
    args += [f"model.backbone.tokenizer={pi0_dir}", *(f"model.backbone.{kv}" for kv in TINY_LM)]
    args += ["model.backbone.max_length=64", "model.backbone.freeze=false", "train.max_steps=1", "train.batch_size=4"]
    assert main(["train-pm", *args, *TRAIN, f"output_dir={out}"]) == 0
    return out


@pytest.mark.parametrize("kind", [
    ["model.kind=bt"],  # on HH transcripts
    ["model.kind=gated", "data.ratings_path={ratings}", "model.head.prompt_input=true"],  # and HelpSteer-style ratings
], ids=["bt-hh", "gated-hh-ratings"])  # fmt: skip
def test_train_pm(seen, tok, pi0_dir, data_dir, tmp_path, kind) -> None:
    args = [f"data.path={data_dir / 'hh.jsonl'}", "data.eval_fraction=0.25"]
    args += [a.format(ratings=data_dir / "ratings.jsonl") for a in kind]
    args += [f"model.backbone.tokenizer={pi0_dir}", *(f"model.backbone.{kv}" for kv in TINY_LM)]
    args += ["model.backbone.max_length=64", "train.max_steps=1", "train.batch_size=4"]
    assert main(["train-pm", *args, *TRAIN, f"output_dir={tmp_path / 'pm'}"]) == 0
    assert saw_a_whole_conversation(seen, tok, response=True)
    if "model.kind=gated" in kind:  # the ratings too
        assert saw_a_whole_conversation(seen, tok, response=True, rows=RATED)


def test_score(seen, tok, pm_run, data_dir, tmp_path) -> None:
    out = tmp_path / "scored.jsonl"
    assert main(["score", f"model={pm_run}", f"data={data_dir / 'hh.jsonl'}", f"out={out}"]) == 0
    assert len(read_jsonl(out)) == len(CONVERSATIONS)
    assert saw_a_whole_conversation(seen, tok, response=True)


def test_dpo_offline(seen, tok, pi0_dir, data_dir, tmp_path) -> None:
    args = [f"policy.name_or_path={pi0_dir}", f"data.path={data_dir / 'chat.jsonl'}", "data.eval_fraction=0"]
    args += ["data.max_length=64", "train.max_steps=1", "train.batch_size=4", "eval.prompts=0", *TRAIN]
    assert main(["dpo", *args, f"output_dir={tmp_path / 'dpo'}"]) == 0
    assert saw_a_whole_conversation(seen, tok, response=True)


POLICY = [
    "train.batch_size=4", "train.micro_batch_size=2", "sampling.max_new_tokens=4", "eval.every=0", "eval.prompts=2",
    "eval.samples_per_prompt=1", "eval.reference_samples_per_prompt=1",
]  # fmt: skip


def test_dpo_online(seen, oracle, tok, pi0_dir, data_dir, tmp_path) -> None:
    """Prompts from HH transcripts (no prompt column: the preference data's prompts)."""
    args = [
        "mode=online",
        f"policy.name_or_path={pi0_dir}",
        "prompts.source=file",
        f"prompts.path={data_dir / 'hh.jsonl'}",
    ]
    args += ["online.rounds=1", "online.steps_per_round=1", "sampling.prompts_per_iteration=2"]
    args += ["sampling.samples_per_prompt=2", *POLICY, *ORACLE, *TRAIN]
    assert main(["dpo", *args, f"output_dir={tmp_path / 'online'}"]) == 0
    assert saw_a_whole_conversation(seen, tok)
    assert_oracle_read_conversations(oracle)


def test_selfplay(seen, oracle, tok, pi0_dir, data_dir, tmp_path) -> None:
    """Prompts from a prompt file whose column holds message lists."""
    args = [f"policy.name_or_path={pi0_dir}", "prompts.source=file", f"prompts.path={data_dir / 'prompts.jsonl'}"]
    args += ["prompts.field=messages", "algorithm=nash_md", "train.iterations=1", "train.steps_per_iteration=1"]
    args += ["sampling.prompts_per_iteration=2", "sampling.samples_per_prompt=2", *POLICY, *ORACLE, *OPTIM]
    assert main(["selfplay", *args, f"output_dir={tmp_path / 'selfplay'}"]) == 0
    assert saw_a_whole_conversation(seen, tok)
    assert_oracle_read_conversations(oracle)


def test_ppo(seen, tok, pi0_dir, data_dir, tmp_path, monkeypatch) -> None:
    """Prompts from UltraFeedback-style lists (the chosen conversations, without their final answer);
    the policy (2 layers) and the reward model (1 layer) both read the whole history."""
    from prefgame import models as pm

    backbone = pm.BackboneConfig(**{**TINY, "num_layers": 1}, max_length=96)  # a new model: the arena tokenizer
    cfg = pm.PMModelConfig(kind="bt", backbone=backbone)
    encoder = pm.build_encoder(backbone, seed=0)
    reward_model = pm.PreferenceModel(encoder, [pm.build_head(cfg, encoder.hidden_size)], cfg)
    pm.save_preference_model(reward_model, tmp_path / "rm", save_backbone=True)
    rewarded: list[str] = []
    reward = pm.PreferenceModel.reward
    monkeypatch.setattr(pm.PreferenceModel, "reward", lambda self, x, y: rewarded.extend(x) or reward(self, x, y))
    args = [f"policy.name_or_path={pi0_dir}", f"reward.path={tmp_path / 'rm'}", "prompts.source=file"]
    args += [f"prompts.path={data_dir / 'chat.jsonl'}", "prompts.field=chosen", "train.iterations=1"]
    args += ["train.rollout_batch_size=4", "train.mini_batch_size=4", "train.micro_batch_size=4", "ppo.epochs=1"]
    args += [a for a in POLICY if not a.startswith("train.")] + [*OPTIM, "train.save_every=0"]
    assert main(["ppo", *args, f"output_dir={tmp_path / 'ppo'}"]) == 0
    assert saw_a_whole_conversation(seen, tok, layers=2)
    assert saw_a_whole_conversation(seen, tok, layers=1)
    histories = [h for h, _, _ in CONVERSATIONS]
    assert rewarded and all(isinstance(x, Conversation) and x.messages in histories for x in rewarded)


def test_generate(seen, tok, pi0_dir, data_dir, tmp_path) -> None:
    out = tmp_path / "outputs.jsonl"
    args = [f"model={pi0_dir}", f"prompts={data_dir / 'prompts.jsonl'}", "field=messages", "max_new_tokens=4"]
    assert main(["generate", *args, f"out={out}"]) == 0
    rows = read_jsonl(out)
    assert [r["prompt_messages"] for r in rows] == [h for h, _, _ in CONVERSATIONS]
    assert [r["prompt"] for r in rows] == [conversation_text(h) for h, _, _ in CONVERSATIONS]
    assert all(seen.saw(history_ids(tok, h)) for h, _, _ in CONVERSATIONS)


def test_evaluate_winrate_judges_generated_conversations(tmp_path) -> None:
    """``prefgame evaluate winrate`` on ``prefgame generate`` outputs: the judge reads each conversation
    (its text for a text judge, its messages for a model judge), also next to single-turn samples."""
    from evaluation.report import policy_battles, read_table

    rows = []
    for generator in ("a", "b"):
        rows += [{"prompt": conversation_text(h), "prompt_messages": h, "output": f"{generator} {c}",
                  "generator": generator} for h, c, _ in CONVERSATIONS[:3]]  # fmt: skip
        rows.append({"prompt": "hi", "prompt_messages": [user("hi")], "output": generator, "generator": generator})
    write_jsonl(tmp_path / "samples.jsonl", rows)
    oracle = RecordingOracle()
    battles = policy_battles(read_table(tmp_path / "samples.jsonl"), oracle, pairs="all")
    assert len(battles) == 4
    conversations = [p for p in oracle.prompts if p != "hi"]
    assert len(conversations) == 3 and all(isinstance(p, Conversation) for p in conversations)
    assert [p.messages for p in conversations] == [h for h, _, _ in CONVERSATIONS[:3]]
