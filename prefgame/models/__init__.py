"""Preference models (docs/design.md §3.1), all preference oracles.

- :mod:`~prefgame.models.backbone` — any transformers model as a text → vector encoder (last-token
  or mean pooling, either padding side, frozen or fine-tuned).
- :mod:`~prefgame.models.heads` — BT reward, general preference embedding (GPM), pairwise, and
  ArmoRM-style gated multi-objective heads; every score exactly anti-symmetric.
- :mod:`~prefgame.models.kinds` — the registry of kinds (bt, gpm, pairwise, gated): one
  :class:`KindSpec` per kind, registered by the kind's own module; everything that lists kinds or
  does what differs between them reads :data:`KINDS`.
- :mod:`~prefgame.models.model` — :class:`PreferenceModel` (backbone + ensemble of heads, the
  oracle), configs, :func:`save_preference_model` / :func:`load_preference_model`.
- :mod:`~prefgame.models.sequence_classifier` — a sequence-classification reward model (the form of
  most public reward models) as a reward and an oracle, P(a ≻ b) = σ(r_a − r_b).
- :mod:`~prefgame.models.load` — :func:`load_model`: a train-pm output or a sequence-classification
  reward model, whichever the path holds (PPO's reward, ``oracle.kind=model``, ``prefgame score``).
- :mod:`~prefgame.models.metrics` — accuracy, log-loss, calibration, per subset/section, and arena
  ground-truth metrics.

Training lives in :mod:`prefgame.train.pm` (``prefgame train-pm``, ``prefgame score``).
"""

from prefgame.models.backbone import BackboneConfig, TextEncoder, build_encoder, pool
from prefgame.models.heads import (
    GatedHead,
    GPMHead,
    InputNorm,
    PairwiseHead,
    ResponseInput,
    RewardHead,
    debias_coefficients,
)
from prefgame.models.kinds import KINDS, KindSpec, kind_spec
from prefgame.models.load import load_model
from prefgame.models.model import (
    EnsembleConfig,
    GatedConfig,
    GPMConfig,
    HeadConfig,
    ModelInfo,
    PMModelConfig,
    PreferenceModel,
    build_head,
    combine_scores,
    load_preference_model,
    save_preference_model,
)
from prefgame.models.sequence_classifier import SequenceClassifierReward, load_sequence_classifier

__all__ = [
    "KINDS",
    "BackboneConfig",
    "EnsembleConfig",
    "GPMConfig",
    "GPMHead",
    "GatedConfig",
    "GatedHead",
    "HeadConfig",
    "InputNorm",
    "KindSpec",
    "ModelInfo",
    "PMModelConfig",
    "PairwiseHead",
    "PreferenceModel",
    "ResponseInput",
    "RewardHead",
    "SequenceClassifierReward",
    "TextEncoder",
    "build_encoder",
    "build_head",
    "combine_scores",
    "debias_coefficients",
    "kind_spec",
    "load_model",
    "load_preference_model",
    "load_sequence_classifier",
    "pool",
    "save_preference_model",
]
