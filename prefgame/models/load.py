"""One loader for every model that scores responses: a ``prefgame train-pm`` output (any kind) or a
sequence-classification reward model (a folder or hub name), for the jobs that take a model path:
``reward.path`` of PPO, ``oracle.kind=model`` of self-play and online DPO, ``model`` of ``prefgame
score``.

Both loaded types are :class:`~prefgame.oracle.PreferenceOracle` s with ``preference_matrix`` and
``has_reward``; those with a scalar reward (bt, gated, a sequence classifier) also have
``reward(prompts, responses)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from prefgame.errors import PrefgameError

# what each source of models accepts besides ``device`` and ``batch_size``
CLASSIFIER_OPTIONS = ("dtype", "max_length")


def resolve_device(device: str | torch.device | None) -> str | torch.device:
    """ "auto" (or None): the CUDA device when there is one, the CPU otherwise."""
    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def is_preference_model_folder(path: str | Path) -> bool:
    path = Path(path)
    return (path / "preference_model.json").exists() or (path / "model" / "preference_model.json").exists()


def load_model(
    path: str | Path,
    *,
    device: str | torch.device | None = "auto",
    batch_size: int = 64,
    backbone_dtype: Callable[[str], torch.dtype] | None = None,
    **options,
):
    """The model at ``path``: a :class:`~prefgame.models.PreferenceModel` when it holds
    ``preference_model.json`` (itself or its ``model/`` folder), else a
    :class:`~prefgame.models.sequence_classifier.SequenceClassifierReward` when its config names a
    ``...ForSequenceClassification`` architecture; on ``device`` ("auto": CUDA when there is one).
    ``options`` (``dtype``, ``max_length``) are the sequence classifier's; a preference model keeps the
    settings it was saved with, but for ``backbone_dtype`` (a trainer's frozen-weight dtype, see
    :func:`~prefgame.models.model.load_preference_model`)."""
    from prefgame.models.model import load_preference_model
    from prefgame.models.sequence_classifier import load_sequence_classifier

    unknown = sorted(set(options) - set(CLASSIFIER_OPTIONS))
    if unknown:
        raise PrefgameError(
            f"unknown model option {', '.join(unknown)} "
            f"(choose from device, batch_size, {', '.join(CLASSIFIER_OPTIONS)})"
        )
    device = resolve_device(device)
    if is_preference_model_folder(path):
        if options:
            raise PrefgameError(
                f"{path}: {', '.join(sorted(options))} apply to sequence-classification reward models only; "
                "a prefgame preference model keeps the settings it was trained with"
            )
        return load_preference_model(path, device=device, batch_size=batch_size, backbone_dtype=backbone_dtype)
    if not Path(path).exists() and str(path).count("/") != 1:
        raise PrefgameError(
            f"model path not found: '{path}' (give a 'prefgame train-pm' output_dir, or a sequence-"
            "classification reward model folder or hub name org/model)"
        )
    return load_sequence_classifier(path, device=device, batch_size=batch_size, **options)
