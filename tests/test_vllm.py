"""The vLLM sampler (``sampling.backend=vllm``): its weight sync and its stops.

On any machine: a stand-in ``vllm`` module records what prefgame asks of the engine (the weights each
sync loads, through ``collective_rpc`` or the older executor path, the sampling parameters), and
self-play with ``backend=vllm`` re-syncs exactly when an optimizer step changed the policy. Where vLLM
and a GPU are installed, the real engine's greedy samples follow the policy's weights after a sync
(:func:`test_real_vllm_engine_follows_the_policy_after_a_sync`); elsewhere that test skips.
"""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from prefgame.arena.lm import build_tokenizer, tiny_llama_config
from prefgame.game.vllm_sampling import VLLMSampler
from prefgame.lm import Stops, stops_for
from prefgame.run import RunDir
from prefgame.train.selfplay import SamplingConfig, SelfPlay, selfplay_config


class OldFakeLLM:
    """Records the engine calls: constructor arguments, loaded weights (copies), prefix-cache resets and
    sampling parameters; ``generate`` returns ``script`` (token ids and finish reason per completion). The
    weights reach the model through the executor's worker, as in vLLM before ``collective_rpc``."""

    script: list[tuple[list[int], str]] = []

    def __init__(self, **kwargs) -> None:
        self.kwargs, self.loaded, self.resets, self.params = kwargs, [], 0, []
        model = types.SimpleNamespace(load_weights=self._load)
        self.worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(model=model))
        self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(driver_worker=self.worker))

    def _load(self, weights) -> None:
        self.loaded.append({k: v.detach().clone() for k, v in weights})

    def reset_prefix_cache(self) -> None:
        self.resets += 1

    def generate(self, prompts, params, use_tqdm=False):
        self.params.append(params)
        done = [types.SimpleNamespace(token_ids=ids, finish_reason=why) for ids, why in self.script]
        return [types.SimpleNamespace(outputs=done[: params.n]) for _ in prompts]


class FakeLLM(OldFakeLLM):
    """The engine of vLLM ≥ 0.7: a function runs on every worker through ``collective_rpc``."""

    def collective_rpc(self, fn):
        return [fn(self.worker)]


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


@pytest.fixture(scope="module")
def pi0(tmp_path_factory) -> Path:
    tok = build_tokenizer()
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pi0")
    LlamaForCausalLM(
        tiny_llama_config(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    ).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def test_sync_loads_the_policy_weights_once_per_version(fake_vllm, pi0):
    tok = build_tokenizer()
    policy = LlamaForCausalLM.from_pretrained(str(pi0))
    sampler = VLLMSampler(str(pi0), tok, SamplingConfig(), "float32", 3, stops=Stops((tok.eos_token_id,)))
    llm = sampler.llm
    assert llm.kwargs == {"model": str(pi0), "dtype": "float32", "seed": 3, "gpu_memory_utilization": 0.3}
    sampler.sync(policy, 0)
    sampler.sync(policy, 0)  # unchanged since the last copy: nothing is sent
    assert len(llm.loaded) == 1 and llm.resets == 1
    state = policy.state_dict()
    assert llm.loaded[0].keys() == state.keys() and all(torch.equal(llm.loaded[0][k], state[k]) for k in state)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    sampler.sync(policy, 1)
    assert len(llm.loaded) == 2 and all(torch.equal(llm.loaded[1][k], v) for k, v in policy.state_dict().items())
    # a vLLM without collective_rpc: the executor's worker loads them
    fake_vllm.LLM = OldFakeLLM
    old = VLLMSampler(str(pi0), tok, SamplingConfig(), "float32", 3, stops=Stops((tok.eos_token_id,)))
    old.sync(policy, 0)
    assert len(old.llm.loaded) == 1


def test_stops_and_texts(fake_vllm, pi0):
    """The engine is asked to stop on every stop id and string (and to ignore the tokenizer's EOS when
    the stop ids leave it out); texts are cut before a stop string; finish reasons give ``stopped``."""
    tok = build_tokenizer()
    music, the, hey = (tok.convert_tokens_to_ids(w) for w in ("music", "the", "hey"))
    FakeLLM.script = [([hey, music, the, hey], "stop"), ([hey, tok.eos_token_id], "stop"), ([hey, hey], "length")]
    stops = Stops((tok.eos_token_id, music), (" the",))
    sampler = VLLMSampler(str(pi0), tok, SamplingConfig(max_new_tokens=7), "float32", 0, stops=stops)
    ys = sampler.generate(["what is 2 plus 3 ?"], n=3, seed=(1, 2), temperature=0.5)
    params = sampler.llm.params[-1]
    assert params.stop == [" the"] and params.stop_token_ids == [tok.eos_token_id, music]
    assert not params.ignore_eos and params.max_tokens == 7 and params.temperature == 0.5 and params.n == 3
    assert ys.texts == ["hey music", "hey", "hey hey"] and ys.stopped.tolist() == [True, True, False]
    only = VLLMSampler(str(pi0), tok, SamplingConfig(), "float32", 0, stops=Stops((music,)))
    only.generate(["x"], n=1, seed=(0,))
    assert only.llm.params[-1].ignore_eos and only.llm.params[-1].stop is None


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_selfplay_syncs_vllm_after_each_update(fake_vllm, pi0, tmp_path):
    """Nash-MD with backend=vllm: the policy's samples come from the engine, synced with the policy's
    current weights whenever an optimizer step changed them; the mixture's from prefgame's loop."""
    tok = build_tokenizer()
    hey, music = tok.convert_tokens_to_ids("hey"), tok.convert_tokens_to_ids("music")
    FakeLLM.script = [([hey, tok.eos_token_id], "stop"), ([music, hey, music], "length")]
    overrides = [
        f"policy.name_or_path={pi0}", f"output_dir={tmp_path}", "sampling.backend=vllm",
        "sampling.prompts_per_iteration=2", "sampling.samples_per_prompt=2", "sampling.max_new_tokens=4",
        "train.steps_per_iteration=1", "train.batch_size=4", "train.micro_batch_size=4", "train.lr=1e-2",
        "train.warmup_steps=0", "train.schedule=constant", "train.mixed_precision=no", "eval.prompts=0",
    ]  # fmt: skip
    cfg = selfplay_config("nash_md", None, overrides)
    out = RunDir(cfg.output_dir)
    sp = SelfPlay(cfg, out, logging.getLogger("test"))
    assert sp.stops == stops_for(sp.tok, sp.policy)
    nash_md = __import__("prefgame.train.selfplay.algorithms.nash_md", fromlist=["nash_md_iteration"])
    for t in range(2):
        nash_md.nash_md_iteration(sp, t, sp.preferences())
        loaded = sp.vllm.llm.loaded
        assert len(loaded) == t + 1
    loaded = sp.vllm.llm.loaded
    assert not all(torch.equal(loaded[0][k], loaded[1][k]) for k in loaded[0])  # the first step moved the policy
    state = sp.policy.state_dict()
    sp.vllm.sync(sp.policy, sp.version)  # the second iteration's step moved it again: sent
    assert len(loaded) == 3 and all(torch.equal(loaded[2][k], v) for k, v in state.items())
    sp.vllm.sync(sp.policy, sp.version)  # unchanged: nothing is sent
    assert len(loaded) == 3
    out.close()


def test_real_vllm_engine_follows_the_policy_after_a_sync(tmp_path):
    """With vLLM and a GPU: greedy samples of the engine equal transformers' greedy samples of the
    policy, before and after its weights change and are synced."""
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    from prefgame.game.lm_sampling import sample_texts

    tok = build_tokenizer()
    torch.manual_seed(0)
    policy = LlamaForCausalLM(tiny_llama_config(tok))
    policy.save_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    policy = policy.cuda().eval()
    stops = stops_for(tok, policy)
    cfg = SamplingConfig(max_new_tokens=8, vllm_gpu_memory_utilization=0.2)
    sampler = VLLMSampler(str(tmp_path), tok, cfg, "float32", 0, stops=stops)
    prompts = ["what is 2 plus 3 ?", "hey explain music in detail and what is 1 plus 4 ?"]

    def check() -> list[str]:
        want = sample_texts(policy, tok, prompts, max_new_tokens=8, temperature=0.0, stops=stops)
        got = sampler.generate(prompts, n=1, seed=(0,), temperature=0.0).texts
        assert got == want
        return got

    first = check()
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(-1.5)
    sampler.sync(policy, 1)
    assert check() != first
