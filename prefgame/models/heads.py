"""Preference heads on top of backbone vectors (docs/design.md §3.1).

A head reads the backbone vectors of the *views* it lists and returns the pair score s(a, b), the
logit of P(a ≻ b | x) = σ(s). Views are sequences built by :class:`~prefgame.models.backbone.TextEncoder`:

    "a", "b"   prompt + response a (resp. b)      h_{x,a}, h_{x,b}   (B, H)
    "x"        the prompt alone                    h_x                (B, H)
    "ab", "ba" prompt + both responses, each order h_{x,a,b}, h_{x,b,a} (B, H)

Two options shared by the heads: ``prompt_input`` feeds the head [h_{x,y}, h_x] instead of h_{x,y}
(the reward or preference vector then reads the prompt's own vector too), and every head first
standardizes its inputs with :class:`InputNorm` (per-feature mean and scale, identity until the
trainer sets them from the training vectors of a frozen backbone).

Every head's score is exactly anti-symmetric by construction: swapping a and b swaps the two
terms of a difference, so s(b, a) = −s(a, b) and s(a, a) = 0 hold bit for bit in floating point.

- :class:`RewardHead` (BT): r(x, y) = MLP(h_{x,y}); s = r_a − r_b.
- :class:`GPMHead` (general preference, embedding form): v = MLP(h_{x,y}) ∈ R^{2k},
  s = v_aᵀ R(x) v_b / τ with R(x) = block-diag(λ_l(x)·[[0, −1], [1, 0]]), λ ≥ 0.
- :class:`PairwiseHead` (general preference, pairwise form): f = MLP(h_{x,a,b});
  s = ½ (f(x,a,b) − f(x,b,a)).
- :class:`GatedHead` (ArmoRM-style multi-objective): r_i = stage-1 regression of objective i,
  debiased r'_i = r_i − λ_i r_verbosity, gate g(x) = softmax(MLP(h_x)/T), reward
  f = scale · Σ_i g_i(x) r'_i; s = f_a − f_b.

Which kind builds which head, and what the model and trainer expect of a head, is in the kind
registry (:mod:`prefgame.models.kinds`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def mlp(in_dim: int, out_dim: int, *, hidden: int, layers: int) -> nn.Module:
    """``layers`` hidden layers of width ``hidden`` with GELU; a plain Linear when hidden == 0."""
    if hidden <= 0 or layers <= 0:
        return nn.Linear(in_dim, out_dim)
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers):
        mods += [nn.Linear(dim, hidden), nn.GELU()]
        dim = hidden
    mods.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*mods)


class InputNorm(nn.Module):
    """Per-feature standardization (h − μ) / σ of backbone vectors (identity until :meth:`fit`).

    Frozen backbones have arbitrary scales (a random embedding table: ~0.02; an LLM's hidden states:
    outlier dimensions in the hundreds); standardizing makes one learning rate fit every backbone.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    @torch.no_grad()
    def fit(self, h: Tensor) -> None:
        """Set μ, σ from vectors h (N, dim); constant features get σ = 1."""
        h = h.double()
        std = h.std(0, correction=0)
        self.mean.copy_(h.mean(0))
        self.scale.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def forward(self, h: Tensor) -> Tensor:
        return (h - self.mean.to(h.dtype)) / self.scale.to(h.dtype)


class ResponseInput(nn.Module):
    """The head's input for one response: norm(h_{x,y}) or norm([h_{x,y}, h_x]) with ``prompt_input``.

    A head keeps it as ``inputs`` (and a prompt-reading head its prompt's :class:`InputNorm` as
    ``prompt_norm``): the trainer fits both from the training vectors of a frozen backbone.
    """

    def __init__(self, in_dim: int, prompt_input: bool) -> None:
        super().__init__()
        self.prompt_input = prompt_input
        self.dim = 2 * in_dim if prompt_input else in_dim
        self.norm = InputNorm(self.dim)

    def forward(self, h_y: Tensor, h_x: Tensor | None) -> Tensor:
        if self.prompt_input:
            if h_x is None:
                raise ValueError("this head reads the prompt vector (prompt_input): pass h_x")
            h_y = torch.cat([h_y, h_x.expand(h_y.shape[0], -1)], dim=-1)
        return self.norm(h_y)


class RewardHead(nn.Module):
    """Bradley–Terry reward head: r(x, y) = MLP(h_{x,y}), P(a ≻ b) = σ(r_a − r_b)."""

    def __init__(self, in_dim: int, *, hidden: int = 0, layers: int = 1, prompt_input: bool = False) -> None:
        super().__init__()
        self.views = ("a", "b", "x") if prompt_input else ("a", "b")
        self.inputs = ResponseInput(in_dim, prompt_input)
        self.net = mlp(self.inputs.dim, 1, hidden=hidden, layers=layers)

    def reward(self, h_y: Tensor, h_x: Tensor | None = None) -> Tensor:
        """(N, H) → (N,)."""
        return self.net(self.inputs(h_y, h_x)).squeeze(-1)

    def forward(self, emb: dict[str, Tensor]) -> dict[str, Tensor]:
        reward_a, reward_b = self.reward(emb["a"], emb.get("x")), self.reward(emb["b"], emb.get("x"))  # (B,)
        return {"score": reward_a - reward_b, "reward_a": reward_a, "reward_b": reward_b}


class GPMHead(nn.Module):
    """General preference embedding head (§3.1).

    v(x, y) = MLP(h_{x,y}) ∈ R^{2k} (optionally scaled to unit norm); λ(x) ∈ R^k_{≥0} is either a
    learned constant softplus(θ) or, with ``prompt_gate``, k · softmax(gate(h_x)) · softplus(θ₀)
    (a learned overall scale times a prompt-dependent split over the k blocks). The score

        s(a, b) = Σ_l λ_l (v_a[2l+1] v_b[2l] − v_a[2l] v_b[2l+1]) / τ = v_aᵀ R(x) v_b / τ

    is computed as g(a, b) − g(b, a) with g(a, b) = Σ_l λ_l v_a[2l+1] v_b[2l], the same expression
    evaluated with a and b exchanged, so anti-symmetry is exact in floating point.
    """

    def __init__(
        self,
        in_dim: int,
        *,
        blocks: int = 4,
        hidden: int = 0,
        layers: int = 1,
        prompt_gate: bool = True,
        normalize: bool = False,
        temperature: float = 1.0,
        prompt_input: bool = False,
    ) -> None:
        super().__init__()
        self.blocks, self.prompt_gate, self.normalize, self.temperature = (
            blocks,
            prompt_gate,
            normalize,
            temperature,
        )
        self.views = ("a", "b", "x") if prompt_gate or prompt_input else ("a", "b")
        self.inputs = ResponseInput(in_dim, prompt_input)
        self.prompt_norm = InputNorm(in_dim)
        self.embed = mlp(self.inputs.dim, 2 * blocks, hidden=hidden, layers=layers)
        # softplus(0.5413) = 1: eigenvalues start at 1
        init = torch.full((1 if prompt_gate else blocks,), 0.5413)
        self.log_eigen = nn.Parameter(init)
        self.gate = mlp(in_dim, blocks, hidden=hidden, layers=layers) if prompt_gate else None

    def vectors(self, h_y: Tensor, h_x: Tensor | None = None) -> Tensor:
        """(N, H) → preference vectors v (N, 2k)."""
        v = self.embed(self.inputs(h_y, h_x))
        return F.normalize(v, dim=-1) if self.normalize else v

    def eigenvalues(self, h_x: Tensor | None, n: int) -> Tensor:
        """λ(x) (N, k), all ≥ 0."""
        scale = F.softplus(self.log_eigen)  # (1,) or (k,)
        if self.gate is None:
            return scale.expand(n, self.blocks)
        return self.blocks * torch.softmax(self.gate(self.prompt_norm(h_x)), dim=-1) * scale  # (N, k)

    def pair_score(self, v_a: Tensor, v_b: Tensor, lam: Tensor) -> Tensor:
        """s(a, b) for aligned rows: v_a, v_b (N, 2k), λ (N, k) → (N,)."""
        g_ab = (lam * v_a[:, 1::2] * v_b[:, 0::2]).sum(-1)
        g_ba = (lam * v_b[:, 1::2] * v_a[:, 0::2]).sum(-1)
        return (g_ab - g_ba) / self.temperature

    def score_matrix(self, v: Tensor, lam: Tensor) -> Tensor:
        """S[i, j] = s(y_i, y_j) for K responses to one prompt: v (K, 2k), λ (k,) → (K, K).

        One matrix product G = (v_odd · λ) v_evenᵀ; S = (G − Gᵀ)/τ is skew-symmetric bit for bit.
        """
        g = (v[:, 1::2] * lam) @ v[:, 0::2].T  # (K, K)
        return (g - g.T) / self.temperature

    def forward(self, emb: dict[str, Tensor]) -> dict[str, Tensor]:
        v_a, v_b = self.vectors(emb["a"], emb.get("x")), self.vectors(emb["b"], emb.get("x"))  # (B, 2k)
        lam = self.eigenvalues(emb.get("x"), v_a.shape[0])  # (B, k)
        return {"score": self.pair_score(v_a, v_b, lam)}


class PairwiseHead(nn.Module):
    """Pairwise general preference head: s(a, b) = ½ (f(x,a,b) − f(x,b,a)), f = MLP(h_{x,a,b}).

    The ½ makes s = f when f is itself anti-symmetric. ``forward`` returns ``score`` (needs both
    views, two backbone passes per pair) or, when only the "ab" view is given, ``one_pass`` = f(x,a,b)
    (single-pass training on randomly ordered pairs; see the trainer's order augmentation).
    """

    views = ("ab", "ba")

    def __init__(self, in_dim: int, *, hidden: int = 0, layers: int = 1) -> None:
        super().__init__()
        self.inputs = ResponseInput(in_dim, False)
        self.net = mlp(in_dim, 1, hidden=hidden, layers=layers)

    def forward(self, emb: dict[str, Tensor]) -> dict[str, Tensor]:
        f_ab = self.net(self.inputs(emb["ab"], None)).squeeze(-1)  # (B,)
        if "ba" not in emb:
            return {"score": f_ab}
        f_ba = self.net(self.inputs(emb["ba"], None)).squeeze(-1)  # (B,)
        return {"score": 0.5 * (f_ab - f_ba)}


class GatedHead(nn.Module):
    """ArmoRM-style multi-objective reward with a prompt gate (§3.1).

    Stage 1 (per-objective ratings, (N, k)): r(x, y) = μ + σ ⊙ z, with μ, σ the per-objective mean
    and standard deviation of the ratings (:meth:`set_standardization`; 0 and 1 by default), so that
    gradient descent fits standardized targets z. z is linear, z = u W + c on the head input u
    (norm(h_{x,y}), or norm([h_{x,y}, h_x]) with ``prompt_input``) — set in closed form by
    :meth:`set_regression` (e.g. from :func:`~prefgame.losses.ridge_fit`) or trained with
    ``train_regression`` — or, with ``regression_hidden`` > 0, an MLP z = MLP(u) trained by gradient
    descent (a frozen backbone whose vectors are not linear in the objectives, e.g. word counts).
    Verbosity debiasing: r' = r − r_v · λ with λ (k,) from :func:`debias_coefficients` (0 for
    objectives that are not debiased). Stage 2: g(x) = softmax(MLP(norm(h_x))/T) (N, k) on the
    simplex, f(x, y) = scale · Σ_i g_i(x) r'_i(x, y).
    """

    views = ("a", "b", "x")

    def __init__(
        self,
        in_dim: int,
        objectives: Sequence[str],
        *,
        hidden: int = 0,
        layers: int = 1,
        temperature: float = 1.0,
        scale_init: float = 1.0,
        learn_scale: bool = True,
        verbosity_index: int = -1,
        train_regression: bool = False,
        regression_hidden: int = 0,
        prompt_input: bool = False,
    ) -> None:
        super().__init__()
        k = len(objectives)
        self.objectives = list(objectives)
        self.temperature, self.verbosity_index = temperature, verbosity_index
        self.inputs = ResponseInput(in_dim, prompt_input)
        self.prompt_norm = InputNorm(in_dim)
        self.regressor = mlp(self.inputs.dim, k, hidden=regression_hidden, layers=1) if regression_hidden > 0 else None
        weight, bias = torch.zeros(self.inputs.dim, k), torch.zeros(k)
        if train_regression and self.regressor is None:
            self.reg_weight, self.reg_bias = nn.Parameter(weight), nn.Parameter(bias)
        else:
            self.register_buffer("reg_weight", weight)
            self.register_buffer("reg_bias", bias)
        self.register_buffer("debias", torch.zeros(k))
        self.register_buffer("rating_mean", torch.zeros(k))
        self.register_buffer("rating_std", torch.ones(k))
        self.gate = mlp(in_dim, k, hidden=hidden, layers=layers)
        log_scale = torch.tensor(float(scale_init)).log()
        self.log_scale = nn.Parameter(log_scale) if learn_scale else None
        if not learn_scale:
            self.register_buffer("fixed_log_scale", log_scale)

    def regression_parameters(self) -> list[nn.Parameter]:
        """The stage-1 parameters (empty when stage 1 is a closed-form fit)."""
        if self.regressor is not None:
            return list(self.regressor.parameters())
        return [p for p in (self.reg_weight, self.reg_bias) if isinstance(p, nn.Parameter)]

    @torch.no_grad()
    def set_regression(self, weight: Tensor, bias: Tensor) -> None:
        self.reg_weight.copy_(weight)
        self.reg_bias.copy_(bias)

    @torch.no_grad()
    def set_standardization(self, mean: Tensor, std: Tensor) -> None:
        self.rating_mean.copy_(mean)
        self.rating_std.copy_(std)

    @torch.no_grad()
    def set_debias(self, coefficients: Tensor) -> None:
        self.debias.copy_(coefficients)

    def ratings(self, h_y: Tensor, h_x: Tensor | None = None) -> Tensor:
        """Stage-1 per-objective predictions r (N, k)."""
        u = self.inputs(h_y, h_x)
        if self.regressor is not None:
            z = self.regressor(u)
        else:
            z = u @ self.reg_weight.to(u.dtype) + self.reg_bias.to(u.dtype)  # standardized units
        return self.rating_mean.to(u.dtype) + self.rating_std.to(u.dtype) * z

    def debiased(self, r: Tensor) -> Tensor:
        """r' = r − r_v λ (N, k); unchanged when there is no verbosity objective."""
        if self.verbosity_index < 0:
            return r
        return r - r[:, self.verbosity_index : self.verbosity_index + 1] * self.debias.to(r.dtype)

    def gating_weights(self, h_x: Tensor) -> Tensor:
        """g(x) = softmax(MLP(norm(h_x))/T), (N, k), rows on the simplex."""
        return torch.softmax(self.gate(self.prompt_norm(h_x)) / self.temperature, dim=-1)

    def scale(self) -> Tensor:
        return (self.log_scale if self.log_scale is not None else self.fixed_log_scale).exp()

    def reward(self, h_y: Tensor, h_x: Tensor) -> Tensor:
        """f(x, y) = scale · Σ_i g_i(x) r'_i(x, y), (N,)."""
        r = self.debiased(self.ratings(h_y, h_x))  # (N, k)
        return self.scale() * (self.gating_weights(h_x) * r).sum(-1)

    def forward(self, emb: dict[str, Tensor]) -> dict[str, Tensor]:
        reward_a, reward_b = self.reward(emb["a"], emb["x"]), self.reward(emb["b"], emb["x"])
        return {"score": reward_a - reward_b, "reward_a": reward_a, "reward_b": reward_b}


def debias_coefficients(ratings: Tensor, verbosity_index: int, debias: Sequence[int], tol: float) -> Tensor:
    """Smallest-magnitude λ_i per objective with |corr(r_i − λ_i r_v, r_v)| ≤ tol (§3.1, ArmoRM).

    ratings (N, k) are stage-1 predictions on a reference set; objectives not in ``debias`` (and the
    verbosity objective itself) get λ = 0. With c = cov(r_i, r_v), s² = var(r_v), the correlation
    ρ(λ) = (c − λ s²) / (s · sd(r_i − λ r_v)) moves monotonically from ρ(0) to 0 at λ* = c / s²;
    λ is found by bisection on [0, λ*] (λ = 0 when |ρ(0)| ≤ tol already). Returns (k,) float64.
    """
    r = ratings.double()
    v = r[:, verbosity_index]
    vc = v - v.mean()
    out = torch.zeros(r.shape[1], dtype=torch.float64)
    var_v = (vc * vc).mean()
    if var_v <= 0:
        return out

    def corr(x: Tensor) -> float:
        xc = x - x.mean()
        denom = (xc * xc).mean().sqrt() * var_v.sqrt()
        return float((xc * vc).mean() / denom) if denom > 0 else 0.0

    for i in debias:
        if i == verbosity_index:
            continue
        target = float(((r[:, i] - r[:, i].mean()) * vc).mean() / var_v)  # λ* (correlation exactly 0)
        if abs(corr(r[:, i])) <= tol:
            continue
        lo, hi = 0.0, target
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if abs(corr(r[:, i] - mid * v)) <= tol:
                hi = mid
            else:
                lo = mid
        out[i] = hi
    return out
