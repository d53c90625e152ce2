"""The pairwise judging prompt, verdict parsing, and how two orders make one preference.

A judge sees one prompt and two responses, shown in some order as "A" (first) and "B" (second), and
answers with a verdict: ``A`` (the first is better), ``B`` (the second is better) or ``C`` (a tie).
Every pair (a, b) is judged in both orders, (a, b) and (b, a), because judges favour a position;
:func:`combine_orders` turns the two single-order verdicts into one P(a ≻ b) (docs/design.md §3.5).

Everything here is a pure function of strings and numbers, shared by the API judge and the local LM
judge, and unit tested on its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from prefgame.errors import PrefgameError

PLACEHOLDERS = ("prompt", "response_a", "response_b")

DEFAULT_TEMPLATE = """\
You are judging which of two assistant responses better serves the user's request.

<request>
{prompt}
</request>

<response_a>
{response_a}
</response_a>

<response_b>
{response_b}
</response_b>

Weigh helpfulness, correctness, relevance and safety. The order of the two responses carries no \
information, and a longer response is not better for being longer. Explain your reasoning in a few \
sentences, then give your verdict as the last line, exactly one of:
[[A]] if response A is better
[[B]] if response B is better
[[C]] if they are equally good
"""

# Sent once, after the judge's own answer, when that answer holds no verdict.
REASK_MESSAGE = (
    "Your reply did not end with a verdict in the required form. Reply with one line only: [[A]], [[B]] or [[C]]."
)

VERDICT_RE = re.compile(r"\[\[\s*([ABC])\s*\]\]")
# P(first shown response is better) for each verdict; a tie is half a win.
VERDICT_VALUE = {"A": 1.0, "B": 0.0, "C": 0.5}
_PLACEHOLDER_RE = re.compile(r"\{(prompt|response_a|response_b)\}")


def load_template(path: str | Path | None) -> str:
    """The template text: the file at ``path``, or :data:`DEFAULT_TEMPLATE` when ``path`` is empty."""
    if not path:
        return DEFAULT_TEMPLATE
    p = Path(path).expanduser()
    if not p.is_file():
        raise PrefgameError(
            f"judge template not found: {p} (give a text file with the placeholders "
            "{prompt}, {response_a} and {response_b}, or leave template_path empty for the default)"
        )
    text = p.read_text(encoding="utf-8")
    check_template(text, where=str(p))
    return text


def check_template(text: str, *, where: str = "judge template") -> None:
    missing = [name for name in PLACEHOLDERS if "{" + name + "}" not in text]
    if missing:
        names = ", ".join("{" + m + "}" for m in missing)
        raise PrefgameError(f"{where} lacks the placeholder(s) {names}: add them where the texts go")


def render(template: str, prompt: str, first: str, second: str) -> str:
    """Fill the three placeholders in one pass, so braces inside the texts are left alone."""
    values = {"prompt": prompt, "response_a": first, "response_b": second}
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)


def parse_verdict(answer: str) -> str | None:
    """The last ``[[A]]``/``[[B]]``/``[[C]]`` in the answer, as "A", "B" or "C"; None when absent."""
    matches = list(VERDICT_RE.finditer(answer or ""))
    return matches[-1].group(1) if matches else None


def soft_verdict(tokens: Sequence[tuple[str, Sequence[tuple[str, float]]]]) -> float | None:
    """P(first shown response is better), ties counted half, from the verdict token's log-probs.

    ``tokens`` is the answer as the endpoint returned it: (token text, [(alternative, logprob), ...])
    per generated token. The verdict token is the one holding the letter of the last verdict marker;
    an alternative counts for letter X when it equals that token with the letter replaced by X
    (so "A", " A" and "[[A" tokenizations all work). The masses of A, B and C are renormalized over
    the three. None when the answer has no verdict or the token has no usable alternatives.
    """
    text = "".join(tok for tok, _ in tokens)
    matches = list(VERDICT_RE.finditer(text))
    if not matches:
        return None
    pos = matches[-1].start(1)  # character offset of the verdict letter
    offset = 0
    for tok, alternatives in tokens:
        if offset <= pos < offset + len(tok):
            j = pos - offset
            variants = {(tok[:j] + x + tok[j + 1 :]).strip(): x for x in "ABC"}
            mass = dict.fromkeys("ABC", 0.0)
            for alt, logprob in alternatives:
                letter = variants.get(alt.strip())
                if letter is not None:
                    mass[letter] += math.exp(logprob)
            total = sum(mass.values())
            if total <= 0.0:
                return None
            return (mass["A"] + 0.5 * mass["C"]) / total
        offset += len(tok)
    return None


def combine_orders(
    verdict_ab: str, verdict_ba: str, p_ab: float | None = None, p_ba: float | None = None
) -> tuple[float, bool]:
    """(P(a ≻ b), position consistent) from the verdicts with a shown first and with b shown first.

    Soft probabilities of "first is better" from both orders, when given, are averaged:
    P = ½ [p_ab + (1 − p_ba)] = ½ + (p_ab − p_ba)/2. Otherwise the hard verdicts decide: a wins in
    both orders → 1, b wins in both → 0, anything else (a tie, or each order preferring the response
    shown in the same position) → ½. ``consistent`` says whether both orders name the same winner
    (or both a tie).
    """
    hard_ab = VERDICT_VALUE[verdict_ab]
    hard_ba = 1.0 - VERDICT_VALUE[verdict_ba]  # the verdict with b first, read as P(a ≻ b)
    consistent = hard_ab == hard_ba
    if p_ab is not None and p_ba is not None:
        return 0.5 + (p_ab - p_ba) / 2.0, consistent
    return (hard_ab if consistent else 0.5), consistent
