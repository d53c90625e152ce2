"""Pairwise judges: every one of them is a :class:`~prefgame.oracle.PreferenceOracle`.

- :class:`LLMJudge` — an LLM behind any OpenAI-compatible chat API (OpenAI, a local vLLM server),
  with both orders judged, retries, a concurrency limit, a persistent judgment cache and
  token/cost accounting. Configured by :class:`JudgeConfig`.
- :class:`LocalLMJudge` — a local transformers causal LM read from its verdict-token probabilities.
- Preference models (``prefgame.models``) and the arena's :class:`~prefgame.arena.world.GoldOracle`
  and :class:`~prefgame.arena.world.AnnotatorOracle` implement the same protocol, so they are judges
  too: evaluation code takes any of them.

See docs/judges.md for configuration, the template format and the cache semantics.
"""

from prefgame.judges.cache import JudgmentCache, judgment_key
from prefgame.judges.llm import JudgeConfig, JudgeError, Judgment, LLMJudge, PairJudgment
from prefgame.judges.local import LocalLMJudge
from prefgame.judges.verdicts import (
    DEFAULT_TEMPLATE,
    combine_orders,
    load_template,
    parse_verdict,
    render,
    soft_verdict,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "JudgeConfig",
    "JudgeError",
    "Judgment",
    "JudgmentCache",
    "LLMJudge",
    "LocalLMJudge",
    "PairJudgment",
    "combine_orders",
    "judgment_key",
    "load_template",
    "parse_verdict",
    "render",
    "soft_verdict",
]
