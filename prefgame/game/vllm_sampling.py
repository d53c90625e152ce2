"""Policy samples from a vLLM engine (``sampling.backend=vllm`` of self-play and online DPO, ``backend=vllm`` of
``prefgame generate``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from prefgame.errors import PrefgameError
from prefgame.game.lm_sampling import Responses, _seed_int, response_texts
from prefgame.lm import Stops, encode_prompt

if TYPE_CHECKING:
    from prefgame.train.selfplay.config import SamplingConfig


class VLLMSampler:
    """Policy samples from a vLLM engine whose weights are refreshed from the training policy.

    Imported and built only with ``sampling.backend=vllm``. Mixture samples (Nash-MD's opponent) need
    two models per token and always use the HF loop. A response ends as the HF samplers end it
    (:class:`~prefgame.lm.Stops`: vLLM's ``stop_token_ids`` and ``stop``; the tokenizer's EOS only when it
    is one of the stop ids); its text is decoded from its tokens and cut before a stop string. Tested
    on CPU with a stand-in engine (the calls it receives) and, where vLLM and a GPU are there, against
    the real one (tests/test_vllm.py).
    """

    def __init__(self, model_path: str, tokenizer, cfg: SamplingConfig, dtype: str, seed: int, *, stops: Stops) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise PrefgameError("sampling.backend=vllm needs vLLM: pip install 'prefgame[vllm]'") from None
        self.tokenizer, self.cfg, self.stops = tokenizer, cfg, stops
        self.llm = LLM(model=model_path, dtype=dtype, seed=seed, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization)
        self.version = -1

    def sync(self, policy, version: int) -> None:
        """Copy the policy's weights into the engine when they changed since the last copy."""
        if version == self.version:
            return
        engine = self.llm.llm_engine
        weights = [(k, v.detach()) for k, v in policy.state_dict().items()]
        if hasattr(self.llm, "collective_rpc"):  # vLLM ≥ 0.7

            def load(worker, w=weights):
                worker.model_runner.model.load_weights(w)

            self.llm.collective_rpc(load)
        else:
            engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()
        self.version = version

    def generate(
        self, prompts: Sequence[str], *, n: int, seed: Sequence[int], temperature: float | None = None
    ) -> Responses:
        """``n`` samples per prompt at ``temperature`` (None: ``sampling.temperature``)."""
        from vllm import SamplingParams

        temperature = self.cfg.temperature if temperature is None else temperature
        params = SamplingParams(
            n=n, temperature=temperature, top_p=1.0, max_tokens=self.cfg.max_new_tokens, seed=_seed_int(seed),
            stop=list(self.stops.strings) or None, stop_token_ids=list(self.stops.token_ids),
            ignore_eos=self.tokenizer.eos_token_id not in self.stops.token_ids,
        )  # fmt: skip
        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
        completions = [c for o in outs for c in o.outputs]
        response_ids = [list(c.token_ids) for c in completions]
        return Responses(
            [p for p in prompts for _ in range(n)], [list(e) for e in encoded for _ in range(n)], response_ids,
            response_texts(self.tokenizer, self.stops, response_ids),
            stopped=torch.tensor([c.finish_reason == "stop" for c in completions], dtype=torch.bool),
        )  # fmt: skip
