"""The linear lower confidence bound of a trained preference model, as a reward, an oracle and a best-of-n
scorer (``pessimism.kind=linear_lcb``; the pure functions are :mod:`prefgame.pessimism`, the reasoning
docs/preference_models.md, *Pessimism*).

Features φ(x, y) are the head's **last hidden layer**: the input of its final linear layer (a linear
head: its standardized input). A BT reward is exactly linear in them, r̂ = wᵀφ + b, so the ellipsoid
{w : ‖w − ŵ‖_{Σ_off} ≤ β} that the offline pairs pin down bounds the reward *difference* between two
responses by β·‖φ_a − φ_b‖_{Σ_off⁻¹}, with Σ_off = λI + Σ_i d_i d_iᵀ over the training pairs'
differences d_i = φ(x_i, chosen_i) − φ(x_i, rejected_i). Hence

- a reward kind (bt): r_lcb(x, a) = r̂(x, a) − c·‖φ(x, a) − φ(x, π0)‖_{Σ_off⁻¹}: pessimistic relative
  to π0, and s(a, b) = r_lcb(x, a) − r_lcb(x, b) (exactly anti-symmetric, as an ensemble's rewards);
- a general kind (gpm): the logit s(a, b) moved c·‖φ(x, a) − φ(x, b)‖_{Σ_off⁻¹} towards 0 and never past
  it (:func:`~prefgame.pessimism.shrink_logit`), exactly anti-symmetric since the penalty is symmetric.
  The GPM's logit is bilinear in its preference vectors, not linear in φ; the same width is a heuristic
  there, the bound on the features the head's vectors are a linear map of.

φ(x, π0) is the mean feature of π0 samples for x: the caller's (best-of-n passes its n candidates, or the
whole pool it draws them from), else ``pessimism.reference`` samples of x, else the offline responses to x,
else the mean of those per-prompt means (an estimate of E_x φ(x, π0), coarse where φ depends much on the
prompt; :attr:`LinearLCB.fallback_prompts` counts the rows that needed it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from prefgame.errors import ConfigError
from prefgame.pessimism import PessimismConfig, linear_lcb, mahalanobis_norm, offline_covariance, shrink_logit

log = logging.getLogger("prefgame.pessimism")


def last_hidden(head: nn.Module, h_y: Tensor, h_x: Tensor | None) -> Tensor:
    """φ: the input of the final linear layer of a BT reward head (``net``) or of a GPM head's vector map
    (``embed``), (N, H) → (N, d)."""
    net = head.net if hasattr(head, "net") else head.embed
    u = head.inputs(h_y, h_x)
    return net[:-1](u) if isinstance(net, nn.Sequential) else u


class LinearLCB:
    """A :class:`~prefgame.models.PreferenceModel` (kind bt or gpm, one member) under the linear LCB: a
    :class:`~prefgame.oracle.PreferenceOracle` with ``preference_matrix`` and, for bt, ``reward``."""

    def __init__(self, model, sigma: Tensor, c: float, reference: dict[str, Tensor], fallback: Tensor) -> None:
        self.model, self.sigma, self.c = model, sigma, c
        self.reference, self.fallback = reference, fallback  # prompt → mean φ (d,); the mean of all
        self.name = f"{model.name}+lcb(c={c:g})"
        self.kind, self.has_reward = model.kind, model.has_reward
        self.fallback_prompts = 0

    # -- features ------------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        """φ(x, y) (N, d) float64."""
        m = self.model
        views = ("a", "x") if "x" in m.views else ("a",)
        emb = m.embed(views, list(prompts), list(responses), list(responses))
        dtype, device = m._head_dtype_device()
        h_x = emb["x"].to(device=device, dtype=dtype) if "x" in emb else None
        return last_hidden(m.heads[0], emb["a"].to(device=device, dtype=dtype), h_x).double().cpu()

    def reference_features(self, prompts: Sequence[str]) -> Tensor:
        """φ(x, π0) (N, d) for each prompt: its reference mean, or the mean of all (the rows counted)."""
        self.fallback_prompts += sum(p not in self.reference for p in prompts)
        return torch.stack([self.reference.get(p, self.fallback) for p in prompts])

    def penalty(self, phi: Tensor, phi_ref: Tensor) -> Tensor:
        """‖φ − φ_ref‖_{Σ_off⁻¹} per row, symmetric in its two arguments bit for bit."""
        return 0.5 * (mahalanobis_norm(phi - phi_ref, self.sigma) + mahalanobis_norm(phi_ref - phi, self.sigma))

    # -- scores --------------------------------------------------------------------------------
    @torch.no_grad()
    def reward(self, prompts: Sequence[str], responses: Sequence[str], reference: Tensor | None = None) -> Tensor:
        """r̂(x, y) − c·‖φ(x, y) − φ(x, π0)‖ (N,) float32; ``reference`` (N, d): φ(x, π0) per row."""
        prompts = list(prompts)
        r = self.model.reward(prompts, responses).double()
        phi_ref = self.reference_features(prompts) if reference is None else reference.double()
        return linear_lcb(r, self.features(prompts, responses), phi_ref, self.sigma, self.c).float()

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> Tensor:
        """Pessimistic pair logits s(a, b) (N,) float64, exactly anti-symmetric."""
        prompts = list(prompts)
        if self.has_reward:
            return self.reward(prompts, responses_a).double() - self.reward(prompts, responses_b).double()
        s = self.model.score(prompts, responses_a, responses_b).double()
        pen = self.penalty(self.features(prompts, responses_a), self.features(prompts, responses_b))
        return shrink_logit(s, self.c * pen)

    def preference(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> Tensor:
        """P(a ≻ b | x) = σ(pessimistic s), (N,) float64."""
        return torch.sigmoid(self.score(prompts, responses_a, responses_b))

    @torch.no_grad()
    def score_matrix(self, prompt: str, responses: Sequence[str], reference: Tensor | None = None) -> Tensor:
        """S[i, j] = pessimistic s(y_i, y_j) for K responses to one prompt, (K, K) float64, skew-symmetric bit
        for bit; K backbone passes. ``reference`` (d,): φ(x, π0) (bt)."""
        responses, k = list(responses), len(responses)
        if self.has_reward:
            ref = None if reference is None else reference.double().expand(k, -1)
            r = self.reward([prompt] * k, responses, ref).double()
            return r[:, None] - r[None, :]
        m = self.model
        views = ("a", "x") if "x" in m.views else ("a",)
        emb = m.embed(views, [prompt] * k, responses, responses)
        dtype, device = m._head_dtype_device()
        h_y = emb["a"].to(device=device, dtype=dtype)
        h_x = emb["x"][:1].to(device=device, dtype=dtype) if "x" in emb else None
        s = m.spec.score_matrix(m.heads[0], h_y, h_x).double().cpu()
        w = torch.linalg.solve_triangular(
            torch.linalg.cholesky(self.sigma), last_hidden(m.heads[0], h_y, h_x).double().cpu().T, upper=False
        ).T  # whitened φ: ‖φ_i − φ_j‖_{Σ⁻¹} = ‖w_i − w_j‖
        dist = torch.cdist(w, w)
        return shrink_logit(s, self.c * 0.5 * (dist + dist.T))

    def preference_matrix(self, prompt: str, responses: Sequence[str]) -> Tensor:
        """M[i, j] = P(y_i ≻ y_j | x) (K, K) float64 from :meth:`score_matrix`."""
        return torch.sigmoid(self.score_matrix(prompt, responses))


def read_offline_pairs(path: str) -> tuple[list[str], list[str], list[str]]:
    """(prompts, chosen, rejected) of a pairs file in any format prefgame reads."""
    from prefgame.data.columns import load_pairs

    pairs = load_pairs(path, "train", skip_invalid=True)
    return list(pairs.prompts), list(pairs.chosen), list(pairs.rejected)


def read_reference(path: str) -> tuple[list[str], list[str]]:
    """(prompts, responses) of π0 samples: jsonl rows with ``prompt`` and ``output`` (or ``response``)."""
    from prefgame.run import read_jsonl

    rows = read_jsonl(path)
    bad = [i + 1 for i, r in enumerate(rows) if "prompt" not in r or not ({"output", "response"} & set(r))]
    if bad:
        raise ConfigError(
            f"pessimism.reference={path}: row {bad[0]} has no prompt and output (or response); give the jsonl of "
            "'prefgame generate' with the π0 model"
        )
    return [r["prompt"] for r in rows], [r.get("output", r.get("response")) for r in rows]


def prompt_means(phi: Tensor, prompts: Sequence[str]) -> dict[str, Tensor]:
    """The mean row of ``phi`` (N, d) per distinct prompt."""
    index: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        index.setdefault(p, []).append(i)
    return {p: phi[rows].mean(0) for p, rows in index.items()}


def linear_lcb_model(model, cfg: PessimismConfig, *, offline=None, reference=None) -> LinearLCB:
    """``model`` under the linear LCB of ``cfg``; Σ_off from ``offline`` (prompts, chosen, rejected) or
    ``cfg.offline_pairs``, φ(x, π0) from ``reference`` (prompts, responses) or ``cfg.reference`` and the offline
    responses (module docstring)."""
    from prefgame.models.model import PreferenceModel

    if not isinstance(model, PreferenceModel) or model.kind not in ("bt", "gpm"):
        raise ConfigError(
            f"pessimism.kind=linear_lcb reads a prefgame preference model's head features: kind bt or gpm, "
            f"not {getattr(model, 'kind', type(model).__name__)}"
        )
    if len(model.heads) > 1:
        raise ConfigError(
            "pessimism.kind=linear_lcb needs a single-head model; an ensemble is pessimistic already "
            "(model.ensemble.mode)"
        )
    if offline is None:
        if not cfg.offline_pairs:
            raise ConfigError(
                "pessimism.kind=linear_lcb needs pessimism.offline_pairs=PATH: the pairs the model was trained on"
            )
        offline = read_offline_pairs(cfg.offline_pairs)
    prompts, chosen, rejected = offline
    wrapper = LinearLCB(model, torch.zeros(0, 0), cfg.c, {}, torch.zeros(0))
    phi_c, phi_r = wrapper.features(prompts, chosen), wrapper.features(prompts, rejected)
    wrapper.sigma = offline_covariance(phi_c - phi_r, cfg.lam)
    ref_prompts, ref_phi = [*prompts, *prompts], torch.cat([phi_c, phi_r])
    means = prompt_means(ref_phi, ref_prompts)
    if reference is None and cfg.reference:
        reference = read_reference(cfg.reference)
    if reference is not None:
        means.update(prompt_means(wrapper.features(*reference), reference[0]))
    wrapper.reference, wrapper.fallback = means, torch.stack(list(means.values())).mean(0)
    log.info(
        f"linear LCB (c={cfg.c:g}, λ={cfg.lam:g}) on {len(prompts)} offline pairs, φ of dimension {len(ref_phi[0])}"
    )
    return wrapper


def apply_pessimism(model, cfg: PessimismConfig):
    """``model`` as ``cfg`` asks: itself for kind none (the default: nothing changes), else its LCB."""
    if cfg.kind == "none":
        return model
    return linear_lcb_model(model, cfg)
