"""A local causal LM as a pairwise judge, read from its next-token probabilities.

The pairwise template (the same one the API judge uses) is rendered as a user turn through the
tokenizer's chat template (plain ``user: ... assistant:`` text without one), followed by the start
of the answer (``answer_prefix``, "[[" by default). The judge's verdict is then a single next token:
P(first shown is better) = softmax(logit_A, logit_B)[A], read without the model writing anything.
Both orders are scored in the same batch and averaged, P(a ≻ b) = ½ + (p_ab − p_ba)/2, so the judge
is anti-symmetric (P(a≻b) + P(b≻a) = 1 to float64 rounding, P(a≻a) = ½ exactly) whatever the
model's position bias. The model judges without first explaining itself, even if the template asks it to.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from prefgame.errors import PrefgameError
from prefgame.judges.verdicts import DEFAULT_TEMPLATE, check_template, render


class LocalLMJudge:
    """A PreferenceOracle from any transformers causal LM and its tokenizer (the model is set to eval)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        template: str = DEFAULT_TEMPLATE,
        verdict_tokens: tuple[str, str] = ("A", "B"),
        answer_prefix: str = "[[",
        batch_size: int = 8,
        name: str = "local-lm-judge",
    ) -> None:
        check_template(template)
        self.model, self.tokenizer, self.template, self.name = model.eval(), tokenizer, template, name
        self.batch_size = batch_size
        self.verdict_ids = [self._single_token(t) for t in verdict_tokens]
        if self.verdict_ids[0] == self.verdict_ids[1]:
            raise PrefgameError(f"verdict tokens {verdict_tokens} map to the same token id: give distinct ones")
        self.prefix_ids = tokenizer(answer_prefix, add_special_tokens=False)["input_ids"] if answer_prefix else []
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or ids[0] == self.tokenizer.unk_token_id:
            raise PrefgameError(
                f"verdict '{text}' is not one known token for this tokenizer (ids {ids}): "
                "give verdict_tokens that each encode to a single token"
            )
        return ids[0]

    def preference(
        self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> torch.Tensor:
        """P(a_i ≻ b_i | x_i), shape (N,), float64: both orders averaged.

        Each pair is scored with its responses in a canonical (sorted) order and flipped back, so
        swapping a and b feeds the model the very same batches: P(a≻b) + P(b≻a) = 1 to rounding.
        """
        n = len(prompts)
        flip = torch.tensor([a > b for a, b in zip(responses_a, responses_b)], dtype=torch.bool)
        lo = [min(a, b) for a, b in zip(responses_a, responses_b)]
        hi = [max(a, b) for a, b in zip(responses_a, responses_b)]
        p_first = self.first_probability(list(prompts) * 2, lo + hi, hi + lo)  # (2N,): lo first, then hi
        p_lo = 0.5 + (p_first[:n] - p_first[n:]) / 2.0  # P(lo ≻ hi), averaged over both orders
        return torch.where(flip, 1.0 - p_lo, p_lo)

    @torch.no_grad()
    def first_probability(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> torch.Tensor:
        """P(first shown is better): softmax over the two verdict tokens, shape (N,), float64.

        Identical inputs are scored once, so they get identical probabilities.
        """
        from prefgame.lm import encode_prompt, pad_batch  # lazy: transformers loads only when used

        device = next(self.model.parameters()).device
        rows: dict[tuple[int, ...], int] = {}  # distinct token sequence → its row
        index = [
            rows.setdefault(
                tuple(encode_prompt(self.tokenizer, render(self.template, x, f, s)) + self.prefix_ids), len(rows)
            )
            for x, f, s in zip(prompts, first, second)
        ]
        sequences = list(rows)
        out = []
        for start in range(0, len(sequences), self.batch_size):
            ids, mask = pad_batch(sequences[start : start + self.batch_size], self._pad_id, left=True)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): left padding does not shift positions
            extra = {"logits_to_keep": 1} if self._keep_last else {}
            logits = self.model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=position_ids.to(device),
                **extra,
            ).logits[:, -1, :]  # (B, V): the next token after the answer prefix
            verdict_logits = logits[:, self.verdict_ids].double()  # (B, 2)
            out.append(torch.softmax(verdict_logits, dim=-1)[:, 0].cpu())
        if not out:
            return torch.zeros(0, dtype=torch.float64)
        return torch.cat(out)[torch.tensor(index, dtype=torch.long)]
