"""Losses and estimators as pure functions of tensors (docs/design.md §2, §3).

Each loss returns ``(loss, metrics)`` — a scalar tensor and a dict of detached 0-dim tensors for
logging. Nothing here touches a model: trainers compute log-probabilities, scores and values and
hand the tensors in.

- :mod:`~prefgame.losses.logprobs` — masked reductions, whitening, chunked response log-probs.
- :mod:`~prefgame.losses.preference` — BT, Plackett–Luce (K-way rankings), pairwise-logistic and
  rating-regression losses, ridge fit, pessimistic ensemble score (§3.1).
- :mod:`~prefgame.losses.policy` — GPO (DPO/cDPO/R-DPO/IPO and the other convex f), SLiC-HF, the
  listwise PRO, InfoNCA and NCA (§3.4), SPPO, INPO, magnetic mirror descent, Nash-MD (§3.3).
- :mod:`~prefgame.losses.rl` — PPO: KL-shaped rewards, GAE, clipped policy and value losses, KL loss
  (§3.4).
"""

from prefgame.losses.logprobs import (
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    reduce_mean,
    response_logprobs,
    sequence_logprobs,
    sequence_mean_logprobs,
    token_logprobs_from_logits,
)
from prefgame.losses.policy import (
    GPO_FUNCTIONS,
    dpo_loss,
    geometric_mixture_logprobs,
    gpo_loss,
    infonca_loss,
    inpo_loss,
    mmd_loss,
    nash_md_pg_loss,
    nca_loss,
    pro_loss,
    slic_loss,
    sppo_loss,
)
from prefgame.losses.preference import (
    bt_loss,
    pairwise_logistic_loss,
    pessimistic_score,
    plackett_luce_loss,
    plackett_luce_nll,
    regression_loss,
    ridge_fit,
)
from prefgame.losses.rl import compute_gae, kl_loss, kl_penalized_rewards, ppo_policy_loss, ppo_value_loss

__all__ = [
    "GPO_FUNCTIONS",
    "bt_loss",
    "plackett_luce_nll",
    "plackett_luce_loss",
    "slic_loss",
    "pro_loss",
    "nca_loss",
    "infonca_loss",
    "gpo_loss",
    "compute_gae",
    "dpo_loss",
    "geometric_mixture_logprobs",
    "inpo_loss",
    "kl_loss",
    "kl_penalized_rewards",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "mmd_loss",
    "nash_md_pg_loss",
    "pairwise_logistic_loss",
    "pessimistic_score",
    "ppo_policy_loss",
    "ppo_value_loss",
    "reduce_mean",
    "regression_loss",
    "response_logprobs",
    "ridge_fit",
    "sequence_logprobs",
    "sequence_mean_logprobs",
    "sppo_loss",
    "token_logprobs_from_logits",
]
