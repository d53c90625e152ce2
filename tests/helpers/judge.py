"""An ``oracle.factory`` for the LLM judge, so that jobs can be pointed at an OpenAI-compatible endpoint
from the command line: ``oracle.kind=factory oracle.factory=helpers.judge:llm_judge
oracle.options={base_url: ..., max_retries: 1}`` (tests/ on PYTHONPATH). The API key comes from
$OPENAI_API_KEY, never from the options (which are written to config.yaml)."""

from __future__ import annotations

from typing import Any

from prefgame.judges import JudgeConfig, LLMJudge


def llm_judge(path: str, **options: Any) -> LLMJudge:
    """``path`` is unused; ``options`` are :class:`~prefgame.judges.JudgeConfig` fields."""
    return LLMJudge(JudgeConfig(**options))
