"""Policy losses: the DPO family (docs/design.md §3.4) and the self-play updates of §3.3.

Inputs are per-sequence log-probabilities log π(y | x), shape (B,) (sums over response tokens, or
means where a length-normalized variant is wanted — the caller decides). Every loss returns
``(loss, metrics)`` with detached 0-dim metrics; the loss is the mean over the batch, or the sum
divided by ``normalizer`` (the global example count of the optimizer step, see
:func:`prefgame.losses.logprobs.reduce_mean`).

Symbols (each config documents the same):

- β (DPO/IPO) — inverse temperature of the implicit reward r = β log π/π0.
- η (SPPO, INPO, MMD) — step size of the mirror-descent update π_{t+1} ∝ π_t · exp(η P(y ≻ π_t)) · ….
- τ (INPO, Nash-MD) and α (MMD) — strength of the pull towards π0. This is the regularization
  coefficient τ of the game in docs/design.md §1/§3.2: the fixed point of the INPO update
  π ∝ π^{1−ητ} π0^{ητ} exp(ηP(y≻π)) is π ∝ π0 exp(P(y≻π)/τ) = softmax(log π0 + Aπ/τ), the §3.2
  equilibrium with regularization τ; MMD's fixed point is the same with α in place of τ.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from prefgame.losses.logprobs import masked_sum, reduce_mean


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


GPOFunction = Literal["logistic", "hinge", "squared", "exponential", "truncated_quadratic", "savage"]


def _gpo_f(name: str, z: Tensor) -> Tensor:
    """The GPO function f(z) of the regularized margin z (elementwise)."""
    if name == "logistic":
        return F.softplus(-z)  # log(1 + e^{−z}) = −log σ(z)
    if name == "hinge":
        return F.relu(1 - z)
    if name == "squared":
        return (1 - z) ** 2
    if name == "exponential":
        return torch.exp(-z)
    if name == "truncated_quadratic":
        return F.relu(1 - z) ** 2
    if name == "savage":
        return torch.sigmoid(-z) ** 2  # 1 / (1 + e^{z})²
    raise ValueError(f"GPO function must be one of {', '.join(GPO_FUNCTIONS)}, got {name!r}")


GPO_FUNCTIONS: tuple[str, ...] = ("logistic", "hinge", "squared", "exponential", "truncated_quadratic", "savage")


def _pair_margin(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    chosen_lengths: Tensor | None,
    rejected_lengths: Tensor | None,
    length_alpha: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """z = βΔ − α(|y_w| − |y_l|) (B,) and the implicit-reward metrics of the pairs (see :func:`dpo_loss`)."""
    _require(beta > 0, f"beta must be > 0, got {beta}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    logits = beta * (chosen_logratios - rejected_logratios)  # (B,) z = βΔ
    if length_alpha != 0.0:
        _require(
            chosen_lengths is not None and rejected_lengths is not None,
            "length_alpha ≠ 0 needs chosen_lengths and rejected_lengths",
        )
        logits = logits - length_alpha * (chosen_lengths - rejected_lengths).to(logits.dtype)  # z
    chosen_rewards = beta * chosen_logratios.detach()  # (B,)
    rejected_rewards = beta * rejected_logratios.detach()  # (B,)
    metrics = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracy": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype).mean(),
        "rewards/margin": (chosen_rewards - rejected_rewards).mean(),
    }
    return logits, metrics


def gpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    f: GPOFunction = "logistic",
    label_smoothing: float = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    length_alpha: float = 0.0,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Generalized preference optimization: ℓ = f(z) on the regularized log-ratio margin. All inputs (B,).

    z = βΔ − α(|y_w| − |y_l|) with Δ = log π(y_w)/π0(y_w) − log π(y_l)/π0(y_l) (as in :func:`dpo_loss`),
    and f one of (``f``):

        logistic             f(z) = log(1 + e^{−z})         DPO
        hinge                f(z) = max(0, 1 − z)            SLiC (with a reference; see :func:`slic_loss`)
        squared              f(z) = (1 − z)²                 IPO: (Δ − 1/(2β))² = f(2βΔ)/(4β²)
        exponential          f(z) = e^{−z}
        truncated_quadratic  f(z) = max(0, 1 − z)²
        savage               f(z) = 1/(1 + e^{z})²            bounded, not convex

    With label smoothing ε: ℓ = (1 − ε) f(z) + ε f(−z) (for the logistic f this is cDPO). Metrics: the
    implicit rewards of :func:`dpo_loss`.
    """
    _require(0.0 <= label_smoothing < 0.5, f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    _require(f in GPO_FUNCTIONS, f"f must be one of {', '.join(GPO_FUNCTIONS)}, got {f!r}")
    z, metrics = _pair_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta,
        chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths, length_alpha=length_alpha,
    )  # fmt: skip
    per_pair = _gpo_f(f, z)
    if label_smoothing:
        per_pair = (1 - label_smoothing) * per_pair + label_smoothing * _gpo_f(f, -z)
    return reduce_mean(per_pair, normalizer=normalizer), metrics


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    length_alpha: float = 0.0,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO, conservative DPO, length-regularized DPO and IPO (§3.4). All inputs (B,).

    Implicit rewards r_w = β log π(y_w)/π0(y_w), r_l = β log π(y_l)/π0(y_l); Δ = (r_w − r_l)/β is the
    log-ratio difference. Length regularization subtracts α|y| from each implicit reward, so the
    regularized reward margin is

        z = (r_w − α|y_w|) − (r_l − α|y_l|) = βΔ − α(|y_w| − |y_l|)

    (α = ``length_alpha``, |y| = ``*_lengths`` in tokens; z = βΔ when α = 0). Then per pair:

        sigmoid (DPO; cDPO with ε = label_smoothing): ℓ = −(1 − ε) log σ(z) − ε log σ(−z)
        ipo:                                          ℓ = (z/β − 1/(2β))²  (= (Δ − 1/(2β))² when α = 0)

    Both are :func:`gpo_loss` members: sigmoid is f = logistic, ipo is f = squared at 2z, divided by
    4β² ((1 − 2z)²/(4β²) = (z/β − 1/(2β))²).

    IPO's Δ is whatever the caller passes: sequence sums give the paper's formula; per-token means
    (:func:`~prefgame.losses.logprobs.sequence_mean_logprobs`) give the length-normalized variant.
    Label smoothing is defined for the sigmoid loss only. Metrics (implicit rewards, no length term):
    rewards/chosen, rewards/rejected (means of r_w, r_l), rewards/accuracy (fraction r_w > r_l),
    rewards/margin (mean r_w − r_l).
    """
    _require(0.0 <= label_smoothing < 0.5, f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    _require(loss_type in ("sigmoid", "ipo"), f"loss_type must be 'sigmoid' or 'ipo', got {loss_type!r}")
    _require(
        loss_type == "sigmoid" or label_smoothing == 0.0,
        "label_smoothing applies to loss_type='sigmoid' only",
    )
    z, metrics = _pair_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta,
        chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths, length_alpha=length_alpha,
    )  # fmt: skip
    if loss_type == "sigmoid":
        per_pair = (1 - label_smoothing) * _gpo_f("logistic", z) + label_smoothing * _gpo_f("logistic", -z)
    else:
        per_pair = _gpo_f("squared", 2 * z) / (4 * beta**2)
    return reduce_mean(per_pair, normalizer=normalizer), metrics


def slic_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    delta: float = 1.0,
    sft_coef: float = 0.0,
    use_reference: bool = False,
    beta: float = 1.0,
    sft_logps: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SLiC-HF: the calibration hinge with margin δ plus an optional SFT term. All inputs (B,).

        ℓ = max(0, δ − m) − λ log π(y_sft | x),   m = log π(y_w) − log π(y_l)   (the paper's form)

    With ``use_reference`` the margin is the log-ratio margin m = Δ = log π(y_w)/π0(y_w) −
    log π(y_l)/π0(y_l); then with δ = 1/β and λ = 0, ℓ = max(0, 1 − βΔ)/β, the GPO hinge divided by β.
    λ = ``sft_coef``; y_sft is the chosen response unless ``sft_logps`` (log π(y_sft | x), (B,)) is given.
    The reference log-probs always feed the metrics (implicit rewards with ``beta``, as in
    :func:`dpo_loss`), plus slic/margin (mean m) and slic/active (share of pairs with m < δ).
    """
    _require(delta > 0, f"delta must be > 0, got {delta}")
    _require(sft_coef >= 0, f"sft_coef must be ≥ 0, got {sft_coef}")
    _, metrics = _pair_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta,
        chosen_lengths=None, rejected_lengths=None, length_alpha=0.0,
    )  # fmt: skip
    m = policy_chosen_logps - policy_rejected_logps  # (B,)
    if use_reference:
        m = m - (ref_chosen_logps - ref_rejected_logps)
    per_pair = F.relu(delta - m)
    if sft_coef:
        per_pair = per_pair - sft_coef * (policy_chosen_logps if sft_logps is None else sft_logps)
    metrics["slic/margin"] = m.detach().mean()
    metrics["slic/active"] = (m.detach() < delta).to(m.dtype).mean()
    return reduce_mean(per_pair, normalizer=normalizer), metrics


def _listwise_rewards(
    policy_logps: Tensor, ref_logps: Tensor | None, beta: float, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """r = β(log π − log π0) (or β log π without a reference), (B, K), and the boolean mask (B, K)."""
    _require(beta > 0, f"beta must be > 0, got {beta}")
    _require(policy_logps.dim() == 2, f"listwise log-probs must be (B, K), got shape {tuple(policy_logps.shape)}")
    logratios = policy_logps if ref_logps is None else policy_logps - ref_logps
    mask = torch.ones_like(policy_logps, dtype=torch.bool) if mask is None else mask.bool()
    return (beta * logratios).where(mask, 0.0), mask  # padding: 0, and zero gradient


def pro_loss(
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    *,
    beta: float,
    sft_coef: float = 0.0,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PRO: the Plackett–Luce loss of a ranking on the policy's implicit rewards, plus an SFT term.

    policy_logps, ref_logps (B, K): log π(y_k | x) of each list's responses **in ranked order, best
    first**; ``mask`` (B, K) marks real entries (lists of different lengths). With
    r_k = β log π(y_k)/π0(y_k) (r_k = β log π(y_k) when ``ref_logps`` is None, the paper's form):

        ℓ = −Σ_k log [exp(r_k) / Σ_{i≥k} exp(r_i)] − λ log π(y_1 | x)

    (:func:`~prefgame.losses.preference.plackett_luce_loss` on r; λ = ``sft_coef``). For K = 2 and
    λ = 0 this is DPO. Metrics: rewards/accuracy (share of ordered pairs i < j with r_i > r_j),
    rewards/top1 (share of lists whose best has the highest reward), rewards/margin (mean r_1 − r_last).
    """
    from prefgame.losses.preference import plackett_luce_nll

    _require(sft_coef >= 0, f"sft_coef must be ≥ 0, got {sft_coef}")
    rewards, mask = _listwise_rewards(policy_logps, ref_logps, beta, mask)
    per_list = plackett_luce_nll(rewards, mask)  # (B,)
    if sft_coef:
        per_list = per_list - sft_coef * policy_logps[:, 0]
    return reduce_mean(per_list, normalizer=normalizer), _ranking_metrics(rewards.detach(), mask, "rewards/")


def _ranking_metrics(scores: Tensor, mask: Tensor, prefix: str) -> dict[str, Tensor]:
    """Ordered-pair accuracy, top-1 accuracy and first-minus-last margin of (B, K) scores in ranked order."""
    k = scores.shape[-1]
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=scores.device), diagonal=1)  # i < j
    pairs = upper & mask[:, :, None] & mask[:, None, :]  # (B, K, K)
    correct = (scores[:, :, None] > scores[:, None, :]) & pairs
    filled = scores.masked_fill(~mask, -torch.inf)
    last = mask.long().sum(-1) - 1  # (B,) entries are a prefix of each row
    return {
        f"{prefix}accuracy": correct.sum().to(scores.dtype) / pairs.sum().clamp(min=1),
        f"{prefix}top1": (filled.argmax(-1) == 0).to(scores.dtype).mean(),
        f"{prefix}margin": (scores[:, 0] - scores.gather(-1, last[:, None]).squeeze(-1)).mean(),
    }


def infonca_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    beta: float,
    alpha: float = 1.0,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """InfoNCA: cross-entropy from the reward-defined target over K responses to the policy's implied one.

    policy_logps, ref_logps, rewards (B, K) (any order); ``mask`` (B, K) marks real entries. With the
    target p_k = softmax_k(R_k/α) (R = ``rewards``, α = ``alpha``, the reward temperature) and the
    implicit rewards r_k = β log π(y_k)/π0(y_k):

        ℓ = −Σ_k p_k log softmax_k(r)_k

    For K = 2 with a hard target (α → 0, R_1 > R_2) this is DPO. Metrics: rewards/accuracy (share of
    pairs that r orders as R does, R ties excluded), rewards/target_entropy (mean entropy of p).
    """
    r, mask, target = _listwise_targets(policy_logps, ref_logps, rewards, beta, alpha, mask)
    log_q = _masked_log_softmax(r, mask)  # (B, K)
    per_list = -(target * log_q).where(mask, 0.0).sum(-1)  # (B,)
    return reduce_mean(per_list, normalizer=normalizer), _target_metrics(r.detach(), rewards, target.detach(), mask)


def nca_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    beta: float,
    alpha: float = 1.0,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """NCA: each response's implicit reward is scored on its own against the target p = softmax(R/α).

        ℓ = −Σ_k p_k log σ(r_k) − (1/K) Σ_k log σ(−r_k),   r_k = β log π(y_k)/π0(y_k)

    (K = the list's real entries). Inputs and metrics as :func:`infonca_loss`.
    """
    r, mask, target = _listwise_targets(policy_logps, ref_logps, rewards, beta, alpha, mask)
    count = mask.to(r.dtype).sum(-1, keepdim=True)  # (B, 1)
    per_entry = target * F.softplus(-r) + F.softplus(r) / count  # −log σ(r) = softplus(−r)
    per_list = per_entry.where(mask, 0.0).sum(-1)  # (B,)
    return reduce_mean(per_list, normalizer=normalizer), _target_metrics(r.detach(), rewards, target.detach(), mask)


def _listwise_targets(
    policy_logps: Tensor, ref_logps: Tensor, rewards: Tensor, beta: float, alpha: float, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """(implicit rewards r (B, K), mask (B, K), target p = softmax(rewards/α) over the real entries)."""
    _require(alpha > 0, f"alpha must be > 0, got {alpha}")
    r, mask = _listwise_rewards(policy_logps, ref_logps, beta, mask)
    return r, mask, _masked_softmax(rewards / alpha, mask)


def _masked_log_softmax(x: Tensor, mask: Tensor) -> Tensor:
    """log softmax over the masked entries of the last dim; 0 at masked-out entries (finite gradients)."""
    filled = x.where(mask, -torch.inf)
    return (x.where(mask, 0.0) - torch.logsumexp(filled, dim=-1, keepdim=True)).where(mask, 0.0)


def _masked_softmax(x: Tensor, mask: Tensor) -> Tensor:
    return _masked_log_softmax(x, mask).exp().where(mask, 0.0)


def _target_metrics(r: Tensor, rewards: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
    pairs = mask[:, :, None] & mask[:, None, :] & (rewards[:, :, None] > rewards[:, None, :])  # R_i > R_j
    correct = pairs & (r[:, :, None] > r[:, None, :])
    entropy = -(target * target.clamp(min=1e-30).log()).where(mask, 0.0).sum(-1)
    return {
        "rewards/accuracy": correct.sum().to(r.dtype) / pairs.sum().clamp(min=1),
        "rewards/target_entropy": entropy.mean(),
    }


def sppo_loss(
    policy_logps: Tensor,
    old_logps: Tensor,
    win_rates: Tensor,
    *,
    eta: float,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SPPO regression onto the multiplicative-weights update π_{t+1} ∝ π_t exp(η P(y ≻ π_t)) (§3.3).

        ℓ = (log π_θ(y) − log π_t(y) − η (P̂(y ≻ π_t) − ½))²,  y ∼ π_t

    The update's log-normalizer log Z_t is replaced by η/2 (E_{y∼π_t} P(y ≻ π_t) = ½). policy_logps,
    old_logps (log π_t, no gradient) and win_rates P̂ (estimated from K samples per prompt), all (B,).
    Metrics: log_ratio (mean log π_θ/π_t), target (mean η(P̂ − ½)).
    """
    _require(eta > 0, f"eta must be > 0, got {eta}")
    log_ratio = policy_logps - old_logps  # (B,)
    target = eta * (win_rates - 0.5)  # (B,)
    loss = reduce_mean((log_ratio - target) ** 2, normalizer=normalizer)
    return loss, {"log_ratio": log_ratio.detach().mean(), "target": target.detach().mean()}


def inpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    old_chosen_logps: Tensor,
    old_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    eta: float,
    tau: float,
    chosen_prob: Tensor | None = None,
    win_rate_gap: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """INPO / online mirror descent as an IPO-style squared loss on pairs from π_t (§3.3). All (B,).

    Update: π_{t+1}(y) ∝ π_t(y)^{1−ητ} π0(y)^{ητ} exp(η P(y ≻ π_t)), so for any pair (y, y'), with
    g(y) = log π(y) − (1 − ητ) log π_t(y) − ητ log π0(y) and h(y, y') = g(y) − g(y'),

        π = π_{t+1}  ⇔  h(y, y') = η (P(y ≻ π_t) − P(y' ≻ π_t))  for all y, y'   (normalizers cancel).

    Regression target R = E_{y,y'∼π_t}[(h(y,y') − η(P(y≻π_t) − P(y'≻π_t)))²]. Its θ-dependent part is
    E[h²] − 4η E_y[g(y)(P(y≻π_t) − ½)] (using E_{y∼π_t} P(y≻π_t) = ½). Now draw y, y' ∼ π_t, let the
    oracle say which wins, (y_w, y_l), and take ℓ = (h(y_w, y_l) − c)². Since h is antisymmetric,
    ℓ = h(y,y')² − 2c s h(y,y') + c² with s = ±1, E[s | y, y'] = 2P(y≻y') − 1, and
    E[(g(y) − g(y'))(2P(y≻y') − 1)] = 4 E_y[g(y)(P(y≻π_t) − ½)]. So E[ℓ] = E[h²] − 8c E[g(P − ½)] +
    const, which has R's gradient exactly when c = η/2:

        ℓ = (h(y_w, y_l) − η/2)²,   h = log π(y_w)/π(y_l) − (1−ητ) log π_t(y_w)/π_t(y_l)
                                         − ητ log π0(y_w)/π0(y_l)

    No win-rate estimate is needed. Checks: at t = 0 (π_t = π0) this is IPO with β = 1/η.

    With ``chosen_prob`` p = P(y_w ≻ y_l) from the oracle, the drawn label is replaced by its expectation
    (Rao–Blackwell): E[ℓ | y, y'] = (h(y_w, y_l) − η(p − ½))² + const, so

        ℓ = (h(y_w, y_l) − η(p − ½))²

    has the same expected gradient with no label noise; the order of the pair no longer matters (h and
    p − ½ both change sign). Pairs the oracle calls even (p = ½) then pull h to 0 instead of ±η/2. The same
    argument holds for pairs drawn from any μ with P(y ≻ μ) in place of P(y ≻ π_t), so the
    extragradient full step (EGPO) is this loss with old = π_t (the θ_t policy) on pairs sampled
    from the half-step policy π_{t+½}.

    With ``win_rate_gap`` = P̂(y_w ≻ π_t) − P̂(y_l ≻ π_t), estimates of the win rates against π_t itself
    (e.g. against K samples of π_t), the target is the update's own right-hand side,

        ℓ = (h(y_w, y_l) − η (P̂(y_w ≻ π_t) − P̂(y_l ≻ π_t)))²,

    which holds pair by pair rather than in expectation over y, y' ∼ π_t: the pairs may then come from
    any behaviour distribution μ (e.g. π_t and π0 samples together), and the minimizer is π_{t+1} on
    μ's support. This reaches responses π_t no longer samples, which on-policy pairs cannot. Give at most
    one of ``chosen_prob`` and ``win_rate_gap``. Needs 0 ≤ ητ ≤ 1. Metrics: h (mean), logratio_margin
    (mean log π(y_w)/π(y_l) − log π_t(y_w)/π_t(y_l)).
    """
    _require(eta > 0, f"eta must be > 0, got {eta}")
    _require(0 <= eta * tau <= 1, f"eta·tau must be in [0, 1], got {eta * tau}")
    _require(chosen_prob is None or win_rate_gap is None, "give at most one of chosen_prob and win_rate_gap")
    policy_margin = policy_chosen_logps - policy_rejected_logps  # (B,)
    old_margin = old_chosen_logps - old_rejected_logps  # (B,)
    ref_margin = ref_chosen_logps - ref_rejected_logps  # (B,)
    h = policy_margin - (1 - eta * tau) * old_margin - eta * tau * ref_margin  # (B,)
    if win_rate_gap is not None:
        target = eta * win_rate_gap  # (B,)
    else:
        target = eta / 2 if chosen_prob is None else eta * (chosen_prob - 0.5)  # (B,) or scalar
    loss = reduce_mean((h - target) ** 2, normalizer=normalizer)
    metrics = {"h": h.detach().mean(), "logratio_margin": (policy_margin - old_margin).detach().mean()}
    return loss, metrics


def mmd_loss(
    policy_logps: Tensor,
    old_logps: Tensor,
    ref_logps: Tensor,
    win_rates: Tensor,
    *,
    eta: float,
    alpha: float,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Magnetic mirror descent (MPO) as an SPPO-style regression, y ∼ π_t (§3.3). All inputs (B,).

    Update with magnet π0: π_{t+1} ∝ [π_t · π0^{ηα} · exp(η P(y ≻ π_t))]^{1/(1+ηα)}, i.e.

        log π_{t+1}(y) − log π_t(y) = [ηα (log π0(y) − log π_t(y)) + η P(y ≻ π_t)] / (1 + ηα) − log Z_t.

    As in SPPO, P is replaced by the estimate P̂ and log Z_t by η/(2(1 + ηα)), which turns P into P − ½:

        ℓ = (log π_θ(y) − log π_t(y) − [ηα (log π0(y) − log π_t(y)) + η (P̂(y ≻ π_t) − ½)] / (1 + ηα))²

    α = 0 is exactly :func:`sppo_loss`. Metrics: log_ratio (mean log π_θ/π_t), target (mean).
    """
    _require(eta > 0, f"eta must be > 0, got {eta}")
    _require(alpha >= 0, f"alpha must be ≥ 0, got {alpha}")
    log_ratio = policy_logps - old_logps  # (B,)
    target = (eta * alpha * (ref_logps - old_logps) + eta * (win_rates - 0.5)) / (1 + eta * alpha)  # (B,)
    loss = reduce_mean((log_ratio - target) ** 2, normalizer=normalizer)
    return loss, {"log_ratio": log_ratio.detach().mean(), "target": target.detach().mean()}


def nash_md_pg_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    preference_vs_mixture: Tensor,
    *,
    tau: float,
    mask: Tensor | None = None,
    normalizer: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Nash-MD policy-gradient surrogate (§3.3), y ∼ π, y' ∼ π^μ (the geometric mixture).

    Objective J(π) = E_{y∼π}[P(y ≻ y') − ½] − τ KL(π‖π0). Its gradient, by the score function:

        ∇J = E_{y∼π}[(P(y≻y') − ½) ∇log π(y)] − τ E_{y∼π}[(log π(y) − log π0(y)) ∇log π(y)]

    (∇KL = E_π[k ∇log π] + E_π[∇log π] with k = log π − log π0, and E_π[∇log π] = 0). So each
    sample gets the detached coefficient c(y) = (P(y≻y') − ½) − τ k(y), where k(y) is the one-sample
    KL estimate, and the loss is −c(y)·log π(y). Differentiating k itself would only add the
    zero-mean term τ∇log π(y); it is dropped. The surrogate is written −c·(log π − sg(log π)) − c, so
    its gradient is −c ∇log π and its value is −ĉ, the negative estimate of J.

    policy_logps, ref_logps: (B, T) token log-probs with ``mask`` (B, T), or (B,) sequence log-probs
    with ``mask=None``; preference_vs_mixture (B,) P(y ≻ y'). Metrics: preference (mean P), kl (mean
    k), objective (mean c).
    """
    _require(tau >= 0, f"tau must be ≥ 0, got {tau}")
    if mask is not None:
        policy_logps = masked_sum(policy_logps, mask, dim=-1)  # (B,)
        ref_logps = masked_sum(ref_logps, mask, dim=-1)  # (B,)
    kl = (policy_logps - ref_logps).detach()  # (B,) one-sample estimate of KL(π‖π0)
    coef = (preference_vs_mixture - 0.5).detach() - tau * kl  # (B,)
    per_seq = -coef * (policy_logps - policy_logps.detach()) - coef  # (B,)
    loss = reduce_mean(per_seq, normalizer=normalizer)
    metrics = {"preference": preference_vs_mixture.detach().mean(), "kl": kl.mean(), "objective": coef.mean()}
    return loss, metrics


def geometric_mixture_logprobs(policy_logits: Tensor, ref_logits: Tensor, *, mixture_coef: float) -> Tensor:
    """Token-level Nash-MD mixture π^μ ∝ π^{1−c} π0^{c}: log_softmax((1 − c)·logits_π + c·logits_π0).

    (§3.3, where c is β.) policy_logits, ref_logits (..., V) → log-probs (..., V). Sampling
    from it token by token gives the mixture used as the opponent y' in :func:`nash_md_pg_loss`.
    """
    _require(0.0 <= mixture_coef <= 1.0, f"mixture_coef must be in [0, 1], got {mixture_coef}")
    dtype = torch.promote_types(policy_logits.dtype, torch.float32)
    mixed = (1 - mixture_coef) * policy_logits.to(dtype) + mixture_coef * ref_logits.to(dtype)  # (..., V)
    return torch.log_softmax(mixed, dim=-1)
