"""Held-out measurements of a self-play policy: oracle win rates, Monte Carlo KL, arena class-level
figures."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from prefgame.errors import PrefgameError
from prefgame.game.lm_sampling import Responses
from prefgame.game.lm_selfplay import ClassGame, smoothed_class_distribution
from prefgame.train.selfplay.runtime import EVAL_SAMPLES, REF_SAMPLES

if TYPE_CHECKING:
    from prefgame.train.selfplay.runtime import SelfPlay


@dataclass
class Evaluator:
    """Held-out measurements of a policy: oracle win rates, Monte Carlo KL, arena class-level figures."""

    sp: SelfPlay
    reference: Responses  # π0's responses on the held-out prompts (reference_samples_per_prompt each)
    game: ClassGame | None
    previous: Responses | None = None
    seconds: float = 0.0
    _paired: list[int] = field(default_factory=list)

    @classmethod
    def build(cls, sp: SelfPlay, reference_classes: torch.Tensor | None = None) -> Evaluator:
        ec = sp.cfg.eval
        ref_resp = sp.sample(  # measurements sample the models themselves (temperature 1)
            sp.eval_prompts, (sp.cfg.train.seed, 0, REF_SAMPLES), n=ec.reference_samples_per_prompt, model=sp.ref,
            temperature=1.0,
        )  # fmt: skip
        game = None
        if sp.arena is not None and sp.cfg.prompts.source == "arena":
            rho0 = (
                reference_classes
                if reference_classes is not None
                else smoothed_class_distribution(
                    sp.arena, ref_resp.prompts, ref_resp.texts, prior=sp.cfg.eval.reference_prior
                )
            )
            game = ClassGame(sp.arena.gold_matrix, rho0, sp.arena.type_probs, sp.cfg.game.tau)
        ev = cls(sp, ref_resp, game)
        # the k-th policy sample of a prompt meets the k-th π0 sample of that prompt
        n_ref, n = ec.reference_samples_per_prompt, ec.samples_per_prompt
        ev._paired = [i * n_ref + k for i in range(len(sp.eval_prompts)) for k in range(n)]
        return ev

    def measure(self, t: int) -> dict[str, Any]:
        """Figures of the run's policy after t updates (π_t, or the weight average of ``train.average_from``);
        remembers its samples for the next measurement."""
        start = time.perf_counter()
        sp = self.sp
        averaged = sp.averaged > 0
        ys = sp.sample(
            sp.eval_prompts, (sp.cfg.train.seed, t, EVAL_SAMPLES), n=sp.cfg.eval.samples_per_prompt, temperature=1.0,
            model=sp.average if averaged else None,
        )  # fmt: skip
        log_ratio = sp.policy_logps(ys, model=sp.average if averaged else None) - sp.sequence_logps(sp.ref, ys)
        prefs = sp.preferences()
        opp = [self.reference.texts[i] for i in self._paired]
        vs_ref = prefs.query(ys.prompts, ys.texts, opp)
        row: dict[str, Any] = {
            "win_rate_vs_ref": float(vs_ref.mean()),
            "win_rate_vs_ref_se": float(vs_ref.std() / math.sqrt(len(vs_ref))),
            "win_rate_vs_previous": None,
            "kl_to_ref": float(log_ratio.mean()),
            "kl_to_ref_se": float(log_ratio.std() / math.sqrt(len(log_ratio))),
            "response_tokens": float(np.mean([len(r) for r in ys.response_ids])),
            "averaged_iterates": sp.averaged,
        }
        if self.previous is not None:
            row["win_rate_vs_previous"] = float(prefs.query(ys.prompts, ys.texts, self.previous.texts).mean())
        if self.game is not None:
            pi = sp.arena.class_distribution(ys.prompts, ys.texts)
            row.update({f"class/{k}": v for k, v in self.game.measure(pi).items()})
        self.previous = ys
        self.seconds += time.perf_counter() - start
        return row

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps so that a resumed run measures as an uninterrupted one: the texts of
        the last measurement's samples (the opponents of the next ``win_rate_vs_previous``)."""
        return {"previous_texts": None if self.previous is None else list(self.previous.texts)}

    def load_state(self, state: dict[str, Any]) -> bool:
        """Restore :meth:`state`; False when ``state`` has none (a checkpoint of an older version)."""
        texts = state.get("previous_texts")
        if texts is None:
            return False
        sp, n = self.sp, self.sp.cfg.eval.samples_per_prompt
        prompts = [p for p in sp.eval_prompts for _ in range(n)]
        if len(texts) != len(prompts):
            raise PrefgameError(
                f"the checkpoint holds {len(texts)} evaluation samples, the config asks for {len(prompts)}: "
                "resume with the eval settings of the interrupted run"
            )
        self.previous = Responses(prompts, [], [], list(texts))  # only prompts and texts are read
        return True
