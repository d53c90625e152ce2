"""Policy samples from a vLLM engine (``sampling.backend=vllm`` of self-play and online DPO, ``backend=vllm`` of
``prefgame generate``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from prefgame.errors import PrefgameError
from prefgame.game.lm_sampling import Responses, _seed_int
from prefgame.lm import encode_prompt

if TYPE_CHECKING:
    from prefgame.train.selfplay.config import SamplingConfig


class VLLMSampler:
    """Policy samples from a vLLM engine whose weights are refreshed from the training policy.

    Imported and built only with ``sampling.backend=vllm``. Not exercised by the CPU test suite.
    Mixture samples (Nash-MD's opponent) need two models per token and always use the HF loop.
    """

    def __init__(self, model_path: str, tokenizer, cfg: SamplingConfig, dtype: str, seed: int) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise PrefgameError("sampling.backend=vllm needs vLLM: pip install 'prefgame[vllm]'") from None
        self.tokenizer, self.cfg = tokenizer, cfg
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
            n=n, temperature=temperature, top_p=1.0, max_tokens=self.cfg.max_new_tokens, seed=_seed_int(seed)
        )
        encoded = [encode_prompt(self.tokenizer, p) for p in prompts]
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
        response_ids = [list(c.token_ids) for o in outs for c in o.outputs]
        texts = [s.strip() for s in self.tokenizer.batch_decode(response_ids, skip_special_tokens=True)]
        return Responses(
            [p for p in prompts for _ in range(n)], [list(e) for e in encoded for _ in range(n)], response_ids, texts
        )
