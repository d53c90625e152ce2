"""The registry of preference-model kinds: one :class:`KindSpec` per kind, registered by the kind's own
module in this package (``bt.py``, ``gpm.py``, ``pairwise.py``, ``gated.py``).

Adding a kind is one module here that calls :func:`register` (and, when its head is new, the head
class, e.g. in :mod:`prefgame.models.heads`): ``model.kind``'s choices and ``--help``,
:func:`~prefgame.models.model.build_head`, :class:`~prefgame.models.model.PreferenceModel`'s scores,
rewards and K×K matrices, save and load, the trainer's pair loss and views
(:mod:`prefgame.train.pm`), PPO's check for a scalar reward and the quickstart's arena comparison all
read :data:`KINDS`.

What a kind's head provides (the model and the trainer call nothing else):

- ``views``: the views of a pair it reads ("a", "b", "x", "ab", "ba";
  :mod:`prefgame.models.heads` lists them), an attribute, since it may depend on the head's options;
- ``forward(emb)``: view name → vectors (B, H) in, a dict with ``score`` s(a, b) (B,) out, exactly
  anti-symmetric; a reward kind's also has ``reward_a`` and ``reward_b`` (its pair loss reads them);
- a reward kind (``reward=True``): ``reward(h_y, h_x)`` → r(x, y) (N,), from the response's vectors
  (and the prompt's, None when the head reads no "x");
- input standardization: ``inputs``, a :class:`~prefgame.models.heads.ResponseInput`, and optionally
  ``prompt_norm``, an :class:`~prefgame.models.heads.InputNorm` of the prompt's vector; the trainer
  fits them on a frozen backbone when ``model.head.standardize`` is on.

Everything in a head's ``state_dict`` is saved in ``heads.safetensors``; the kind's name is saved in
``preference_model.json`` and ``model_config.yaml``, and loading rebuilds the head with the kind's
``build_head`` before it loads the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from prefgame import registry
from prefgame.errors import PrefgameError
from prefgame.losses import bt_loss, pairwise_logistic_loss

if TYPE_CHECKING:
    from prefgame.models.model import PMModelConfig

# (head outputs, labels p = P(a ≻ b), margins, normalizer) → (loss, metrics)
PairLoss = Callable[[dict, Tensor, Tensor, float], tuple[Tensor, dict]]


def reward_pair_loss(loss_cfg: Any) -> PairLoss:
    """The Bradley–Terry loss on the head's ``reward_a``, ``reward_b`` (``bt_loss``), with the
    score-gap margin (``loss.margin``, ``loss.margin_scale``) and reward centering (``loss.center_coef``)."""

    def loss(out: dict, labels: Tensor, margins: Tensor, normalizer: float):
        margin = margins * loss_cfg.margin_scale if loss_cfg.margin == "score_gap" else None
        return bt_loss(
            out["reward_a"],
            out["reward_b"],
            labels=labels,
            margin=margin,
            center_coef=loss_cfg.center_coef,
            normalizer=normalizer,
        )

    return loss


def score_pair_loss(loss_cfg: Any) -> PairLoss:
    """The logistic loss on the head's ``score`` (``pairwise_logistic_loss``)."""

    def loss(out: dict, labels: Tensor, margins: Tensor, normalizer: float):
        return pairwise_logistic_loss(out["score"], labels, normalizer=normalizer)

    return loss


@dataclass(frozen=True)
class KindSpec:
    name: str  # the config value `model.kind: <name>`; saved with the model
    # one head from the current torch RNG: (model config, backbone width, objectives, verbosity index) → head
    build_head: Callable[[PMModelConfig, int, Sequence[str], int], nn.Module]
    # a reward: the head scores single responses, r(x, y), and s(a, b) = r(x,a) − r(x,b) (bt, gated);
    # otherwise a general preference: the head scores pairs only (gpm, pairwise)
    reward: bool
    help: str = ""  # a few words after the name in `model.kind`'s --help
    title: str = ""  # the model's name in tables (the quickstart's); empty: the kind's name
    order: int = 100  # place in every listing (config choices, --help, tables); ties by name
    # the loss of a training pair: loss config (PMLossConfig) → PairLoss;
    # None: reward_pair_loss for a reward, score_pair_loss for a general preference
    pair_loss: Callable[[Any], PairLoss] | None = None
    # the views of a pair's two sides: the trainer standardizes the head's inputs on both sides' vectors
    pair_views: tuple[str, str] = ("a", "b")
    # the views a training step passes the head: (the head's views, loss config) → views; None: all of them
    train_views: Callable[[tuple[str, ...], Any], tuple[str, ...]] | None = None
    # one member's K×K score matrix S[i, j] = s(y_i, y_j) for one prompt, skew-symmetric bit for bit:
    # (head, the K responses' vectors h_y (K, H), the prompt's h_x (1, H) or None) → S (K, K).
    # None: a reward takes differences of its K rewards, a general preference asks the K(K−1)/2 pairs
    score_matrix: Callable[[nn.Module, Tensor, Tensor | None], Tensor] | None = None
    # multi-objective (gated): the head has one rating output per objective (ModelInfo.objectives) and a
    # prompt gate over them (PreferenceModel.gating_weights); the trainer reads data.ratings_path and
    # trains it in the two stages of model.gated (ratings, then the gate on the pairs)
    ratings: bool = False
    arena: bool = False  # one of the models the quickstart trains and compares (prefgame.train.pm_arena)

    def loss(self, loss_cfg: Any) -> PairLoss:
        """The pair loss of this kind under ``loss_cfg`` (a :class:`~prefgame.train.pm.PMLossConfig`)."""
        build = self.pair_loss or (reward_pair_loss if self.reward else score_pair_loss)
        return build(loss_cfg)

    def views_for_training(self, head_views: Sequence[str], loss_cfg: Any) -> tuple[str, ...]:
        """The views a training step reads, out of the head's ``head_views``."""
        views = tuple(head_views)
        return self.train_views(views, loss_cfg) if self.train_views is not None else views


KINDS: dict[str, KindSpec] = {}


def register(spec: KindSpec) -> KindSpec:
    return registry.register(KINDS, spec, "preference-model kind")


def load_kinds() -> dict[str, KindSpec]:
    """Import every module of this package (each registers its kind); order :data:`KINDS` by
    (``order``, name), whatever the import order."""
    from prefgame.models import kinds

    return registry.load_package(kinds, KINDS, order=lambda item: (item[1].order, item[0]))


def kind_spec(name: str) -> KindSpec:
    """The registered kind ``name`` (PrefgameError naming the choices otherwise)."""
    if name not in KINDS:
        raise PrefgameError(f"unknown preference model kind '{name}' (choose one of {', '.join(KINDS)})")
    return KINDS[name]


def kind_names(**flags: bool) -> list[str]:
    """The names of the kinds whose fields equal ``flags`` (e.g. ``reward=True``), in registry order."""
    return [n for n, s in KINDS.items() if all(getattr(s, f) == v for f, v in flags.items())]
