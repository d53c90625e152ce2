"""An LLM judge over any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, ...).

One *judgment* is one prompt with two responses shown in one order; a *pair* (a, b) takes two
judgments, (a, b) and (b, a). For each judgment the judge:

1. looks it up in the :class:`~prefgame.judges.cache.JudgmentCache` (a hit costs nothing);
2. sends the rendered template through the official ``openai`` client (its own retries are off),
   retrying 429 (after ``Retry-After`` when given), 408/409/5xx and timeouts with jittered
   exponential backoff, within a total wait budget per request;
3. parses the verdict; when there is none it re-asks once in the same conversation, and if that also
   fails records the judgment as *failed*, never as a label;
4. appends the result (ok or failed) to the cache at once, so a killed run keeps what it paid for.

Errors that no retry can fix (endpoint unreachable, key rejected, unknown model) stop the run with
one :class:`JudgeError` line. :meth:`LLMJudge.preference` raises :class:`JudgeError` when any pair
failed (failures must never become labels silently); :meth:`LLMJudge.judge_pairs` returns per-pair
records with their status instead. The API key is held only by the client: it is never logged,
written, hashed or put in a message, and an answer or error that echoes it (or part of it) is stored,
logged and shown with it redacted; credentials inside ``base_url`` are never shown either.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Literal

import torch

from prefgame.config import config_to_dict, param
from prefgame.errors import PrefgameError
from prefgame.judges.cache import JudgmentCache, judgment_key
from prefgame.judges.verdicts import (
    REASK_MESSAGE,
    combine_orders,
    load_template,
    parse_verdict,
    render,
    soft_verdict,
)
from prefgame.redact import redact_secret, redact_urls, url_for_display
from prefgame.run import Progress

log = logging.getLogger(__name__)

OPENAI_BASE_URL = "https://api.openai.com/v1"
TOP_LOGPROBS = 5  # alternatives asked per generated token when use_logprobs
RETRY_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
# A refused connection rarely heals within seconds; a dropped one does at the first retry.
CONNECTION_RETRIES = 2


@dataclass(repr=False)
class JudgeConfig:
    """Settings of an LLM judge over an OpenAI-compatible chat API."""

    model: str = param("gpt-4o-mini", "judge model name as the endpoint knows it")
    base_url: str = param("", "endpoint base URL ending in /v1; empty: $OPENAI_BASE_URL, else OpenAI")
    api_key: str = param("", "API key; empty: $OPENAI_API_KEY (never written or printed)", secret=True)
    max_concurrency: int = param(8, "judgments in flight at once")
    max_retries: int = param(6, "retries per request on 429, 408/409/5xx and timeouts")
    backoff_base_s: float = param(1.0, "first backoff wait; doubles per retry, jittered in [½, 1]×")
    max_retry_wait_s: float = param(120.0, "cap on the total time one request may spend waiting to retry")
    timeout_s: float = param(60.0, "timeout of one HTTP request, seconds")
    temperature: float = param(0.0, "sampling temperature of the judge", ge=0)
    max_tokens: int = param(1024, "most tokens the judge may write per answer")
    template_path: str = param("", "pairwise template file ({prompt}, {response_a}, {response_b}); empty: default")
    use_logprobs: bool = param(False, "soft preferences from verdict-token log-probs when the endpoint has them")
    cost_per_1k_input: float = param(0.0, "price of 1,000 prompt tokens (for the cost report)")
    cost_per_1k_output: float = param(0.0, "price of 1,000 completion tokens (for the cost report)")
    cache_dir: str | None = param(
        "~/.cache/prefgame/judgments", "folder of the judgment cache (judgments.jsonl); null: no cache"
    )

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("model must name the judge model")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.timeout_s <= 0 or self.backoff_base_s < 0 or self.max_retry_wait_s < 0:
            raise ValueError("timeout_s must be > 0; backoff_base_s and max_retry_wait_s must be >= 0")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.cost_per_1k_input < 0 or self.cost_per_1k_output < 0:
            raise ValueError("token prices must be >= 0")

    def __repr__(self) -> str:  # the dataclass repr would show the API key
        return f"JudgeConfig({config_to_dict(self, redact=True)})"


class JudgeError(PrefgameError):
    """The judge cannot run (endpoint, key, model), or some pairs could not be judged."""


@dataclass(frozen=True)
class Judgment:
    """One judgment: a prompt with two responses shown in one order."""

    key: str
    status: Literal["ok", "failed"]
    verdict: str | None  # "A" first shown is better, "B" second, "C" tie; None when failed
    p_first: float | None  # soft P(first shown is better) from log-probs, ties half; None without
    answer: str  # the judge's last answer, verbatim
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cached: bool = False  # read from the cache, not paid for in this run


@dataclass(frozen=True)
class PairJudgment:
    """Both orders of one pair and the preference they give."""

    status: Literal["ok", "failed"]
    preference: float | None  # P(a ≻ b) in [0, 1], ties ½; None when failed
    consistent: bool | None  # both orders named the same winner; None when failed
    ab: Judgment  # a shown first
    ba: Judgment  # b shown first
    error: str | None = None


class _RequestFailed(Exception):
    """One judgment failed after its retries (recorded as failed, the run goes on)."""


class _Cancelled(Exception):
    """The run is stopping; abandon this judgment without recording anything."""


class LLMJudge:
    """A PreferenceOracle backed by an OpenAI-compatible chat endpoint; see the module docstring."""

    def __init__(self, cfg: JudgeConfig | None = None, *, seed: int | None = None) -> None:
        import openai  # lazy: the package imports without the client

        self.cfg = cfg = cfg or JudgeConfig()
        self.base_url = (cfg.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL).rstrip("/")
        api_key = cfg.api_key or os.environ.get("OPENAI_API_KEY", "")
        if not api_key and self.base_url == OPENAI_BASE_URL:
            raise JudgeError(
                "no API key for the OpenAI judge: set OPENAI_API_KEY (or judge.api_key), "
                "or point judge.base_url at an OpenAI-compatible server"
            )
        self._secret = api_key  # what is redacted from answers, errors and logs
        api_key = api_key or "EMPTY"  # local servers (vLLM) accept any key unless started with one
        self.name = f"llm-judge:{cfg.model}"
        self.template = load_template(cfg.template_path)
        self.settings = {  # everything that can change a verdict; hashed into every cache key
            "model": cfg.model,
            "base_url": self.base_url,
            "template": self.template,
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
            "use_logprobs": cfg.use_logprobs,
            "top_logprobs": TOP_LOGPROBS if cfg.use_logprobs else 0,
        }
        self.cache = JudgmentCache(cfg.cache_dir)
        self._openai = openai
        self._client = openai.OpenAI(api_key=api_key, base_url=self.base_url, max_retries=0, timeout=cfg.timeout_s)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stats = dict.fromkeys(
            ("pairs", "judgments", "cache_hits", "requests", "retries", "reasks", "failures",
             "inconsistent_pairs", "no_logprobs", "prompt_tokens", "completion_tokens"),
            0,
        )  # fmt: skip
        self._stats["cost"] = 0.0

    # -- the oracle protocol -----------------------------------------------------------------
    def preference(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> torch.Tensor:
        """P(a_i ≻ b_i | x_i), shape (N,), float64, ties ½.

        Raises :class:`JudgeError` when any pair could not be judged: a failure is never a label.
        Judgments that succeeded are cached, so calling again asks only for the failed ones.
        """
        records = self.judge_pairs(prompts, responses_a, responses_b)
        failed = [i for i, r in enumerate(records) if r.status != "ok"]
        if failed:
            raise JudgeError(
                f"{len(failed)} of {len(records)} pairs could not be judged (pair {failed[0]}: "
                f"{records[failed[0]].error}); failures are not labels: they are retried on the next "
                "call, or use judge_pairs() to keep the judged pairs"
            )
        return torch.tensor([r.preference for r in records], dtype=torch.float64)

    def judge_pairs(
        self,
        prompts: Sequence[str],
        responses_a: Sequence[str],
        responses_b: Sequence[str],
        *,
        on_judgment: Callable[[Judgment], None] | None = None,
    ) -> list[PairJudgment]:
        """Judge every pair in both orders; one record per pair, failures with ``status="failed"``.

        ``on_judgment`` is called in the calling thread after each judgment paid for in this call
        is stored; an exception raised there stops the run (in-flight requests finish and are kept).
        """
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(
                f"prompts, responses_a and responses_b differ in length: "
                f"{len(prompts)}, {len(responses_a)}, {len(responses_b)}"
            )
        todo: dict[str, tuple[str, str, str]] = {}
        pair_keys = []
        for x, a, b in zip(prompts, responses_a, responses_b):
            k_ab = judgment_key(self.settings, x, a, b)
            k_ba = judgment_key(self.settings, x, b, a)
            pair_keys.append((k_ab, k_ba))
            todo.setdefault(k_ab, (x, a, b))
            todo.setdefault(k_ba, (x, b, a))
        done: dict[str, Judgment] = {}
        for key in list(todo):
            entry = self.cache.get(key)
            if entry is not None:
                done[key] = _judgment_from_entry(entry)
                del todo[key]
        self._count(pairs=len(pair_keys), cache_hits=len(done))
        if todo:
            done.update(self._run(todo, on_judgment))
        records = [_pair(done[k_ab], done[k_ba]) for k_ab, k_ba in pair_keys]
        self._count(inconsistent_pairs=sum(r.consistent is False for r in records))
        return records

    @property
    def stats(self) -> dict[str, Any]:
        """Counts since this judge was made: pairs, judgments paid for, cache hits, HTTP requests,
        retries, re-asks, failed judgments, position-inconsistent pairs, answers lacking log-probs,
        prompt/completion tokens and their cost at the configured prices."""
        with self._lock:
            return dict(self._stats)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> LLMJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running judgments -------------------------------------------------------------------
    def _run(
        self, todo: dict[str, tuple[str, str, str]], on_judgment: Callable[[Judgment], None] | None
    ) -> dict[str, Judgment]:
        stop = threading.Event()
        done: dict[str, Judgment] = {}
        progress = Progress(len(todo), f"judging with {self.cfg.model}", log)
        pool = ThreadPoolExecutor(max_workers=self.cfg.max_concurrency, thread_name_prefix="judge")
        try:
            futures = {pool.submit(self._judge, key, *args, stop): key for key, args in todo.items()}
            for future in as_completed(futures):
                judgment = future.result()  # a JudgeError here stops the run
                done[futures[future]] = judgment
                progress.update(failures=self.stats["failures"])
                if on_judgment is not None:
                    on_judgment(judgment)
        except BaseException:
            stop.set()  # workers stop before their next request or wait; in-flight answers are kept
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return done

    def _judge(self, key: str, prompt: str, first: str, second: str, stop: threading.Event) -> Judgment:
        """Ask, re-ask once if needed, store the outcome in the cache, return it."""
        messages = [{"role": "user", "content": render(self.template, prompt, first, second)}]
        usage = [0, 0]
        answer, verdict, p_first, error = "", None, None, None
        try:
            for attempt in range(2):
                if attempt == 1:  # one re-ask in the same conversation
                    self._count(reasks=1)
                    messages += [
                        {"role": "assistant", "content": answer},
                        {"role": "user", "content": REASK_MESSAGE},
                    ]
                answer, tokens = self._complete(messages, usage, stop)
                verdict = parse_verdict(answer)
                if verdict is not None:
                    if self.cfg.use_logprobs:
                        p_first = soft_verdict(tokens) if tokens else None
                        self._count(no_logprobs=p_first is None)
                    break
            else:
                error = "no verdict ([[A]], [[B]] or [[C]]) in the answer, also after one re-ask"
        except _RequestFailed as exc:
            error = str(exc)
        cost = (usage[0] * self.cfg.cost_per_1k_input + usage[1] * self.cfg.cost_per_1k_output) / 1000.0
        judgment = Judgment(
            key=key,
            status="ok" if error is None else "failed",
            verdict=verdict if error is None else None,
            p_first=p_first,
            answer=self._redact(answer),
            error=self._redact(error),
            prompt_tokens=usage[0],
            completion_tokens=usage[1],
            cost=cost,
        )
        entry = {k: v for k, v in dataclasses.asdict(judgment).items() if k != "cached"}
        self.cache.put({**entry, "model": self.cfg.model, "time": time.time()})
        self._count(judgments=1, failures=error is not None)
        return judgment

    def _complete(
        self, messages: list[dict[str, str]], usage: list[int], stop: threading.Event
    ) -> tuple[str, list[tuple[str, list[tuple[str, float]]]] | None]:
        """One chat completion with retries: (answer text, per-token log-probs or None)."""
        openai = self._openai
        kwargs: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        if self.cfg.use_logprobs:
            kwargs.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        waited = 0.0
        for attempt in range(self.cfg.max_retries + 1):
            if stop.is_set():
                raise _Cancelled
            self._count(requests=1)
            retry_after = None
            try:
                response = self._client.chat.completions.create(**kwargs)
            except openai.APIStatusError as exc:
                status = exc.status_code
                self._raise_if_fatal(status)
                reason = f"HTTP {status}: {self._redact(_short(exc))}"
                if status not in RETRY_STATUS:
                    raise _RequestFailed(reason) from None
                retry_after = _retry_after_s(exc.response.headers) if status == 429 else None
            except openai.APITimeoutError:
                reason = f"no answer within timeout_s={self.cfg.timeout_s:g}"
            except openai.APIConnectionError as exc:
                if attempt >= min(CONNECTION_RETRIES, self.cfg.max_retries):
                    raise JudgeError(
                        f"cannot reach the judge endpoint {url_for_display(self.base_url)} "
                        f"({self._redact(_short(exc))}): "
                        "start the server, or fix judge.base_url / OPENAI_BASE_URL (it ends in /v1)"
                    ) from None
                reason = "connection error"
            else:
                self._add_usage(response, usage)
                return _answer(response)
            if attempt == self.cfg.max_retries:
                raise _RequestFailed(f"gave up after {attempt + 1} attempts; last: {reason}")
            if retry_after is not None:  # the server said when; a little jitter spreads the herd
                delay = retry_after * self._uniform(1.0, 1.1)
            else:
                delay = self.cfg.backoff_base_s * 2**attempt * self._uniform(0.5, 1.0)
            if waited + delay > self.cfg.max_retry_wait_s:
                raise _RequestFailed(
                    f"retry wait budget max_retry_wait_s={self.cfg.max_retry_wait_s:g} used up; last: {reason}"
                )
            log.warning(f"judge request failed ({reason}); retry {attempt + 1} in {delay:.2f}s")
            self._count(retries=1)
            if stop.wait(delay):
                raise _Cancelled
            waited += delay
        raise AssertionError("unreachable")

    def _raise_if_fatal(self, status: int) -> None:
        url = url_for_display(self.base_url)
        if status in (401, 403):
            raise JudgeError(
                f"the judge endpoint {url} rejected the API key (HTTP {status}): "
                "set OPENAI_API_KEY or judge.api_key to a key valid for this endpoint"
            )
        if status == 404:
            raise JudgeError(
                f"the judge endpoint {url} answered 404 for model '{self.cfg.model}': check judge.model "
                "and that judge.base_url ends in /v1"
            )

    # -- small helpers -----------------------------------------------------------------------
    def _add_usage(self, response: Any, usage: list[int]) -> None:
        u = getattr(response, "usage", None)
        prompt_tokens = int(getattr(u, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(u, "completion_tokens", 0) or 0)
        usage[0] += prompt_tokens
        usage[1] += completion_tokens
        cost = prompt_tokens * self.cfg.cost_per_1k_input + completion_tokens * self.cfg.cost_per_1k_output
        self._count(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost=cost / 1000.0)

    def _count(self, **increments: float) -> None:
        with self._lock:
            for name, value in increments.items():
                self._stats[name] += value

    def _uniform(self, low: float, high: float) -> float:
        with self._lock:
            return self._rng.uniform(low, high)

    def _redact(self, text: str | None) -> str | None:
        """``text`` without the API key (or a part of it) and without URL credentials."""
        if not text:
            return text
        return redact_urls(redact_secret(text, self._secret))


def require_some_judged(records: Sequence[PairJudgment]) -> None:
    """Raise JudgeError when there were pairs to judge and every judgment failed: there is nothing to
    report, and the first failure says why (callers that keep partial results drop failed pairs)."""
    if not records or any(r.status == "ok" for r in records):
        return
    first = records[0]
    reason = next((j.error for j in (first.ab, first.ba) if j.error), first.error)
    raise JudgeError(
        f"every judgment failed ({len(records)} pairs, both orders); the first: {reason}. Check judge.model, "
        "the template and what the endpoint answers (the judgment cache records every failure)"
    )


def _answer(response: Any) -> tuple[str, list[tuple[str, list[tuple[str, float]]]] | None]:
    if not response.choices:
        return "", None
    choice = response.choices[0]
    text = choice.message.content or ""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return text, None
    tokens = [(t.token, [(alt.token, alt.logprob) for alt in (t.top_logprobs or [])]) for t in content]
    return text, tokens


def _judgment_from_entry(entry: dict[str, Any]) -> Judgment:
    fields = {f.name for f in dataclasses.fields(Judgment)}
    return Judgment(**{k: v for k, v in entry.items() if k in fields}, cached=True)


def _pair(ab: Judgment, ba: Judgment) -> PairJudgment:
    if ab.status != "ok" or ba.status != "ok":
        error = "; ".join(f"{order}: {j.error}" for order, j in (("a first", ab), ("b first", ba)) if j.error)
        return PairJudgment("failed", None, None, ab, ba, error)
    assert ab.verdict is not None and ba.verdict is not None
    preference, consistent = combine_orders(ab.verdict, ba.verdict, ab.p_first, ba.p_first)
    return PairJudgment("ok", preference, consistent, ab, ba)


def _retry_after_s(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(float(value) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _short(exc: BaseException, limit: int = 200) -> str:
    """The exception's message on one line, without the client's "Error code: 500 - " prefix."""
    text = re.sub(r"^Error code: \d+ - ", "", " ".join(str(exc).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."
