"""Unit tests for prefgame.losses: hand-derived values, exact gradients, invariances (docs/design.md §3).

Expected values are derived in the comments; softplus(x) = log(1 + eˣ) = −log σ(−x). Everything runs
in float64 with tolerances of 1e-9 unless a comment says otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from prefgame.losses import (
    GPO_FUNCTIONS,
    bt_loss,
    compute_gae,
    dpo_loss,
    geometric_mixture_logprobs,
    gpo_loss,
    infonca_loss,
    inpo_loss,
    kl_penalized_rewards,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    mmd_loss,
    nash_md_pg_loss,
    nca_loss,
    pairwise_logistic_loss,
    pessimistic_score,
    plackett_luce_loss,
    plackett_luce_nll,
    ppo_policy_loss,
    ppo_value_loss,
    pro_loss,
    reduce_mean,
    regression_loss,
    response_logprobs,
    ridge_fit,
    sequence_logprobs,
    sequence_mean_logprobs,
    slic_loss,
    sppo_loss,
    token_logprobs_from_logits,
)

D = torch.float64
TOL = 1e-9


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=D)


def close(a, b, tol: float = TOL) -> None:
    torch.testing.assert_close(torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D), rtol=0, atol=tol)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ---------------------------------------------------------------------------------------------- logprobs


def test_masked_reductions_and_whiten():
    """x = [1, 2, 3, NaN] with the last entry masked: sum 6, mean 2, unbiased var (1+0+1)/2 = 1,
    so whitened = [−1, 0, 1] / sqrt(1 + 1e-8), masked entry 0; keeping the mean gives x̄ + that."""
    x = t(1.0, 2.0, 3.0, float("nan"))
    mask = torch.tensor([True, True, True, False])
    close(masked_sum(x, mask), 6.0)
    close(masked_mean(x, mask), 2.0)
    close(masked_var(x, mask), 1.0)
    scale = 1 / math.sqrt(1 + 1e-8)
    close(masked_whiten(x, mask), t(-scale, 0.0, scale, 0.0))
    close(masked_whiten(x, mask, shift_mean=False), t(2 - scale, 2.0, 2 + scale, 0.0))
    # per-row mean with an empty row: (1+2)/2, and 0 for the empty row (count clamped to 1)
    x2 = t(1.0, 2.0, 5.0, 7.0).view(2, 2)
    close(masked_mean(x2, torch.tensor([[1, 1], [0, 0]]), dim=-1), t(1.5, 0.0))
    with pytest.raises(ValueError):
        masked_var(x, torch.tensor([True, False, False, False]))


def test_whiten_gives_zero_mean_unit_unbiased_variance():
    torch.manual_seed(0)
    x = torch.randn(4, 6, dtype=D) * 3 + 5
    mask = torch.rand(4, 6) > 0.3
    w = masked_whiten(x, mask, eps=0.0)
    close(masked_mean(w, mask), 0.0)
    close(masked_var(w, mask), 1.0)
    close(w[~mask], torch.zeros(int((~mask).sum()), dtype=D))


def test_token_logprobs_from_logits_exact_and_stable():
    """logits = log [1, 2, 3] → probs [1/6, 2/6, 3/6]; label 2 → log ½. Huge equal logits → log ½."""
    logits = torch.log(t(1.0, 2.0, 3.0))
    close(token_logprobs_from_logits(logits, torch.tensor(2)), math.log(0.5))
    close(token_logprobs_from_logits(t(1000.0, 1000.0), torch.tensor(0)), math.log(0.5))
    half = torch.tensor([[1e4, -1e4, 0.0]], dtype=torch.bfloat16)
    assert token_logprobs_from_logits(half, torch.tensor([0])).dtype == torch.float32


def _naive_response_logprobs(hidden, weight, labels, mask):
    logps = torch.log_softmax(hidden @ weight.T, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, logps, 0.0)


def _random_lm_inputs(seed: int = 0, B: int = 3, T: int = 4, H: int = 2, V: int = 11):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, dtype=D, generator=g)
    weight = torch.randn(V, H, dtype=D, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)[:B, :T]
    return hidden, weight, labels, mask


@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_response_logprobs_matches_naive_values_and_gradients(chunk_size):
    """N = 8 masked tokens: chunk 1 (8 chunks), 3 (3 chunks, last partial), 100 (> N, one chunk)."""
    hidden, weight, labels, mask = _random_lm_inputs()
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    got = response_logprobs(h1, w1, labels, mask, chunk_size=chunk_size)
    want = _naive_response_logprobs(h2, w2, labels, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    upstream = torch.randn(mask.shape, dtype=D)  # any downstream loss
    (got * upstream).sum().backward()
    (want * upstream).sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(w1.grad, w2.grad, rtol=0, atol=1e-12)


def test_response_logprobs_gradcheck():
    hidden, weight, labels, mask = _random_lm_inputs(seed=1, B=2, T=4, H=3, V=5)
    fn = lambda h, w: response_logprobs(h, w, labels, mask, chunk_size=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hidden.requires_grad_(), weight.requires_grad_()))


@pytest.mark.parametrize("chunk_size", [2, None])
def test_response_logprobs_with_an_lm_head_bias(chunk_size):
    """log softmax(h Wᵀ + b): values and gradients of h, W and b as autograd of the naive form gives."""
    hidden, weight, labels, mask = _random_lm_inputs(seed=2, B=2, T=4, H=3, V=5)
    bias = torch.randn(weight.shape[0], dtype=D, generator=torch.Generator().manual_seed(3))

    def naive(h, w, b):
        logps = torch.log_softmax(h @ w.T + b, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        return torch.where(mask, logps, 0.0)

    def chunked(h, w, b):
        return response_logprobs(h, w, labels, mask, chunk_size=chunk_size, lm_head_bias=b)

    inputs = (hidden.requires_grad_(), weight.requires_grad_(), bias.requires_grad_())
    torch.testing.assert_close(chunked(*inputs), naive(*inputs), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(chunked, inputs)


def test_token_logps_in_one_chunk_is_the_plain_projection_bit_for_bit():
    """prefgame.lm.token_logps (chunk_size None, what SFT and self-play train with) gives exactly the
    values and gradients of projecting every response row at once with the lm head module."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefgame.lm import build_pairs_batch, token_logps

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    batch = build_pairs_batch([[3, 4, 5], [6, 7]], [[8, 9, 10, 11], [12, 13]], 0)

    def plain(m):
        base = getattr(m, m.base_model_prefix)
        hidden = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[:, :-1]
        labels, keep = batch["input_ids"][:, 1:], batch["response_mask"][:, 1:].bool()
        logits = m.get_output_embeddings()(hidden[keep]).float()
        picked = logits.gather(-1, labels[keep].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        return torch.zeros(labels.shape).masked_scatter(keep, picked)

    params = list(model.parameters())
    got, want = token_logps(model, batch), plain(model)
    assert torch.equal(got, want)
    for a, b in zip(torch.autograd.grad(got.sum(), params), torch.autograd.grad(want.sum(), params)):
        assert torch.equal(a, b)


def test_response_logprobs_empty_mask_and_low_precision():
    """No response tokens → zeros and zero gradients; bf16 inputs → float32 log-probs within bf16
    rounding of the float64 result, gradients in the inputs' dtype."""
    hidden, weight, labels, mask = _random_lm_inputs()
    h = hidden.clone().requires_grad_()
    out = response_logprobs(h, weight, labels, torch.zeros_like(mask), chunk_size=2)
    out.sum().backward()
    close(out, torch.zeros(mask.shape, dtype=D))
    close(h.grad, torch.zeros_like(hidden))

    h16, w16 = hidden.bfloat16().requires_grad_(), weight.bfloat16().requires_grad_()
    out16 = response_logprobs(h16, w16, labels, mask, chunk_size=3)
    assert out16.dtype == torch.float32
    want = _naive_response_logprobs(h16.detach().double(), w16.detach().double(), labels, mask)
    torch.testing.assert_close(out16.double(), want, rtol=0, atol=0.05)
    out16.sum().backward()
    assert h16.grad.dtype == w16.grad.dtype == torch.bfloat16


class _LargestVocabTensor(TorchDispatchMode):
    """Records the most rows of any op output whose last dim is the vocabulary size V."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in tree_flatten(out)[0]:
            if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[-1] == self.vocab:
                self.rows = max(self.rows, x.numel() // self.vocab)
        return out


def test_response_logprobs_never_materializes_more_than_a_chunk_of_logits():
    """B·T = 12 tokens, N = 8 masked, chunk 3, H = 2: no (·, V) tensor may exceed 3 rows in forward or
    backward (Wᵀ is (2, V)). The naive path makes a (12, V) tensor, so the detector is not vacuous."""
    hidden, weight, labels, mask = _random_lm_inputs(V=13)
    hidden.requires_grad_()
    weight.requires_grad_()
    with _LargestVocabTensor(13) as probe:
        response_logprobs(hidden, weight, labels, mask, chunk_size=3).sum().backward()
    assert probe.rows <= 3
    with _LargestVocabTensor(13) as probe:
        _naive_response_logprobs(hidden, weight, labels, mask).sum().backward()
    assert probe.rows == 12


def test_sequence_logprobs_sum_and_mean():
    """Row 0: tokens −1, −2 valid → sum −3, mean −1.5. Row 1: −4 only → −4, −4."""
    logps = t(-1.0, -2.0, -9.0, -9.0, -4.0, -9.0).view(2, 3)
    mask = torch.tensor([[1, 1, 0], [0, 1, 0]])
    close(sequence_logprobs(logps, mask), t(-3.0, -4.0))
    close(sequence_mean_logprobs(logps, mask), t(-1.5, -4.0))


def test_global_normalization_makes_accumulation_match_full_batch():
    """4 sequences with 1, 3, 2, 4 response tokens (10 in all), split into micro-batches [0] and [1:4].
    Σ_mb Σ_tokens ℓ / 10 equals the full-batch token mean, value and gradient; the mean of per-micro-
    batch means (ℓ̄_1 + ℓ̄_2)/2 weights the lone token 4× too much and does not."""
    torch.manual_seed(0)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    old = torch.randn(4, 4, dtype=D)
    adv = torch.randn(4, 4, dtype=D)
    logps = (old + 0.3 * torch.randn(4, 4, dtype=D)).requires_grad_()
    full, _ = ppo_policy_loss(logps, old, adv, mask, clip_range=0.2)
    (full_grad,) = torch.autograd.grad(full, logps)

    total = int(mask.sum())
    accumulated, naive = 0.0, 0.0
    for rows in (slice(0, 1), slice(1, 4)):
        part, _ = ppo_policy_loss(logps[rows], old[rows], adv[rows], mask[rows], clip_range=0.2, normalizer=total)
        accumulated = accumulated + part
        naive = naive + ppo_policy_loss(logps[rows], old[rows], adv[rows], mask[rows], clip_range=0.2)[0] / 2
    (acc_grad,) = torch.autograd.grad(accumulated, logps)
    close(accumulated, full)
    close(acc_grad, full_grad)
    assert abs(float(naive.detach()) - float(full.detach())) > 1e-3

    # sequence-level losses use the global example count the same way: micro-batches of 1 and 3
    pc, pr, rc, rr = torch.randn(4, 4, dtype=D).unbind(1)
    full_dpo, _ = dpo_loss(pc, pr, rc, rr, beta=0.1)
    parts = [dpo_loss(pc[s], pr[s], rc[s], rr[s], beta=0.1, normalizer=4)[0] for s in (slice(0, 1), slice(1, 4))]
    close(sum(parts), full_dpo)
    close(reduce_mean(t(1.0, 2.0, 3.0), normalizer=6), 1.0)


# -------------------------------------------------------------------------------------------- preference


def test_bt_loss_hand_values():
    """r_c = (1, 1, −0.5), r_r = (0, −1, 0.5), so Δ = (1, 2, −1).
    Pair 0: m = 0.5, p = 1 → softplus(−0.5) = 0.474076984180.
    Pair 1: m = 0, p = 0.8 → 0.8 softplus(−2) + 0.2 softplus(2) = softplus(−2) + 0.2·2 = 0.526928011043.
    Pair 2: m = 0, p = ½ (tie) → ½ softplus(1) + ½ softplus(−1) = ½ (1 + 2 softplus(−1)).
    Centering 0.01·(r_c + r_r)² = 0.01·(1, 0, 0). Accuracy over non-ties (pairs 0, 1: Δ > 0, p > ½) = 1;
    mean Δ = 2/3; mean (r_c + r_r)² = 1/3."""
    chosen, rejected = t(1.0, 1.0, -0.5), t(0.0, -1.0, 0.5)
    loss, metrics = bt_loss(chosen, rejected, labels=t(1.0, 0.8, 0.5), margin=t(0.5, 0.0, 0.0), center_coef=0.01)
    per_pair = [
        softplus(-0.5) + 0.01 * 1.0**2,
        0.5269280110429726 + 0.01 * 0.0**2,
        0.5 * (1 + 2 * softplus(-1)) + 0.01 * 0.0**2,
    ]
    close(loss, sum(per_pair) / 3)
    close(metrics["accuracy"], 1.0)
    close(metrics["margin"], 2 / 3)
    close(metrics["center_penalty"], 1 / 3)


def test_bt_loss_default_is_minus_log_sigmoid_and_accuracy_counts_wrong_and_zero():
    """labels default to 1: ℓ = mean softplus(−Δ) with Δ = (2, −1, 0); accuracy 1/3 (Δ = 0 is wrong)."""
    chosen = t(2.0, 0.0, 3.0).requires_grad_()
    loss, metrics = bt_loss(chosen, t(0.0, 1.0, 3.0))
    close(loss, (softplus(-2) + softplus(1) + softplus(0)) / 3)
    close(metrics["accuracy"], 1 / 3)
    # ∂ℓ/∂r_c = −σ(−Δ)/3
    (grad,) = torch.autograd.grad(loss, chosen)
    close(grad, -torch.sigmoid(-t(2.0, -1.0, 0.0)) / 3)


def test_pairwise_logistic_loss_hand_values():
    """s = (1, −2), p = (1, 0.25): softplus(−1) and 0.25 softplus(2) + 0.75 softplus(−2); accuracy
    (s > 0, p > ½) and (s < 0, p < ½) → 1."""
    loss, metrics = pairwise_logistic_loss(t(1.0, -2.0), t(1.0, 0.25))
    close(loss, (softplus(-1) + 0.25 * softplus(2) + 0.75 * softplus(-2)) / 2)
    close(metrics["accuracy"], 1.0)
    _, tie_metrics = pairwise_logistic_loss(t(1.0), t(0.5))
    assert math.isnan(float(tie_metrics["accuracy"]))


def test_regression_loss_masks_missing_ratings():
    """Observed errors (1−0)², (2−4)², (3−3)² → 5/3; the NaN target and its prediction are ignored."""
    pred = t(1.0, 2.0, 3.0, 100.0).view(2, 2).requires_grad_()
    target = t(0.0, 4.0, 3.0, float("nan")).view(2, 2)
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    loss, metrics = regression_loss(pred, target, mask)
    close(loss, 5 / 3)
    close(metrics["observed"], 0.75)
    (grad,) = torch.autograd.grad(loss, pred)
    close(grad, t(2 * 1 / 3, 2 * -2 / 3, 0.0, 0.0).view(2, 2))  # 2(pred − target)/3, 0 where missing


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_ridge_fit_matches_lstsq_on_augmented_systems(fit_intercept):
    """Each objective j solves min ‖[X_O 1; √l2 I 0][w; b] − [y_O; 0]‖² — the ridge problem with an
    unpenalized intercept — which numpy.linalg.lstsq solves independently."""
    rng = np.random.default_rng(0)
    n, d, k, l2 = 30, 4, 3, 0.7
    X = rng.normal(size=(n, d))
    Y = X @ rng.normal(size=(d, k)) + 2.0 + 0.1 * rng.normal(size=(n, k))
    mask = rng.random((n, k)) > 0.3
    Y_nan = np.where(mask, Y, np.nan)
    w, b = ridge_fit(torch.tensor(X), torch.tensor(Y_nan), torch.tensor(mask), l2, fit_intercept=fit_intercept)
    for j in range(k):
        Xo, yo = X[mask[:, j]], Y[mask[:, j], j]
        ones = np.ones((len(yo), 1)) if fit_intercept else np.zeros((len(yo), 0))
        A = np.block([[Xo, ones], [math.sqrt(l2) * np.eye(d), np.zeros((d, ones.shape[1]))]])
        sol = np.linalg.lstsq(A, np.concatenate([yo, np.zeros(d)]), rcond=None)[0]
        np.testing.assert_allclose(w[:, j].numpy(), sol[:d], rtol=0, atol=1e-10)
        np.testing.assert_allclose(float(b[j]), sol[d] if fit_intercept else 0.0, rtol=0, atol=1e-10)


def test_ridge_fit_objective_without_observations_is_zero():
    X = torch.randn(5, 2, dtype=D)
    mask = torch.tensor([[1, 0]] * 5, dtype=torch.bool)
    w, b = ridge_fit(X, torch.randn(5, 2, dtype=D), mask, 1.0)
    close(w[:, 1], torch.zeros(2, dtype=D))
    close(b[1], 0.0)


def test_pessimistic_score_hand_values():
    """Columns (1, 3, 2) and (4, 2, 6): min 1, 2; means 2, 4; unbiased std 1, 2 → mean − 1.5 std."""
    scores = t(1.0, 4.0, 3.0, 2.0, 2.0, 6.0).view(3, 2)
    close(pessimistic_score(scores, mode="min"), t(1.0, 2.0))
    close(pessimistic_score(scores, mode="mean_std", c=1.5), t(2 - 1.5, 4 - 3.0))
    with pytest.raises(ValueError):
        pessimistic_score(scores, mode="max")


# ------------------------------------------------------------------------------------------------ policy


def test_dpo_sigmoid_hand_value_and_gradient():
    """Δ = (−10 − (−11)) − (−12 − (−11)) = 1 − (−1) = 2, β = 0.1 → −log σ(0.2) = softplus(−0.2)
    = 0.598138869382; ∂ℓ/∂log π(y_w) = −β σ(−βΔ) = −0.1 · 0.450166002688."""
    pc = t(-10.0).requires_grad_()
    loss, metrics = dpo_loss(pc, t(-12.0), t(-11.0), t(-11.0), beta=0.1)
    close(loss, 0.5981388693815918)
    (grad,) = torch.autograd.grad(loss, pc)
    close(grad, t(-0.1 * 0.45016600268752216))
    # implicit rewards β·(1) and β·(−1)
    close(metrics["rewards/chosen"], 0.1)
    close(metrics["rewards/rejected"], -0.1)
    close(metrics["rewards/accuracy"], 1.0)
    close(metrics["rewards/margin"], 0.2)


def test_cdpo_ipo_and_length_regularized_hand_values():
    """Same pair (Δ = 2):
    cDPO ε = 0.1: 0.9 softplus(−0.2) + 0.1 softplus(0.2) = softplus(−0.2) + 0.1·0.2 = 0.618138869382.
    IPO β = 0.5: (Δ − 1/(2·0.5))² = (2 − 1)² = 1;  with Δ = 3 (rejected policy −13): (3 − 1)² = 4.
    R-DPO α = 0.05, |y_w| = 10, |y_l| = 4: z = 0.2 − 0.05·6 = −0.1 → softplus(0.1) = 0.744396660074.
    IPO with the same length term, β = 0.5: (z/β − 1)² with z = 1 − 0.3 → (1.4 − 1)² = 0.16."""
    args = (t(-10.0), t(-12.0), t(-11.0), t(-11.0))
    close(dpo_loss(*args, beta=0.1, label_smoothing=0.1)[0], 0.6181388693815918)
    close(dpo_loss(*args, beta=0.5, loss_type="ipo")[0], 1.0)
    close(dpo_loss(t(-10.0), t(-13.0), t(-11.0), t(-11.0), beta=0.5, loss_type="ipo")[0], 4.0)
    lengths = {"chosen_lengths": t(10.0), "rejected_lengths": t(4.0), "length_alpha": 0.05}
    close(dpo_loss(*args, beta=0.1, **lengths)[0], 0.744396660073571)
    close(dpo_loss(*args, beta=0.5, loss_type="ipo", **lengths)[0], 0.16)
    with pytest.raises(ValueError):
        dpo_loss(*args, beta=0.1, length_alpha=0.05)
    with pytest.raises(ValueError):
        dpo_loss(*args, beta=0.1, loss_type="ipo", label_smoothing=0.1)


def test_cdpo_and_ipo_gradients_and_batch_reduction_hand_values():
    """cDPO: ∂ℓ/∂z = −(1 − ε)σ(−z) + εσ(z) = ε − σ(−z); z = βΔ = 0.2, ε = 0.1, ∂z/∂log π(y_w) = β:
    grad = 0.1 · (0.1 − 0.450166002688) = −0.035016600269, and +0.035016600269 for log π(y_l).
    IPO β = 0.5: ℓ = (Δ − 1)², ∂ℓ/∂log π(y_w) = 2(Δ − 1) = 2 at Δ = 2, −2 for log π(y_l).
    Batch of Δ = 2 and Δ = 3 (IPO β = 0.5): mean (1 + 4)/2 = 2.5; with normalizer 4: 5/4 = 1.25.
    Reward accuracy counts a tie r_w = r_l as wrong: pairs (Δ = 2, Δ = 0) → 0.5."""
    pc, pr = t(-10.0).requires_grad_(), t(-12.0).requires_grad_()
    loss, _ = dpo_loss(pc, pr, t(-11.0), t(-11.0), beta=0.1, label_smoothing=0.1)
    grads = torch.autograd.grad(loss, (pc, pr))
    close(grads[0], t(0.1 * (0.1 - 0.45016600268752216)))
    close(grads[1], t(-0.1 * (0.1 - 0.45016600268752216)))
    loss, _ = dpo_loss(pc, pr, t(-11.0), t(-11.0), beta=0.5, loss_type="ipo")
    grads = torch.autograd.grad(loss, (pc, pr))
    close(grads[0], t(2.0))
    close(grads[1], t(-2.0))
    batch = (t(-10.0, -10.0), t(-12.0, -13.0), t(-11.0, -11.0), t(-11.0, -11.0))
    close(dpo_loss(*batch, beta=0.5, loss_type="ipo")[0], 2.5)
    close(dpo_loss(*batch, beta=0.5, loss_type="ipo", normalizer=4)[0], 1.25)
    _, metrics = dpo_loss(t(-10.0, -11.0), t(-12.0, -11.0), t(-11.0, -11.0), t(-11.0, -11.0), beta=0.1)
    close(metrics["rewards/accuracy"], 0.5)


def test_sppo_hand_value_and_gradient():
    """log π_θ − log π_t = −1 − (−1.5) = 0.5; target η(P̂ − ½) = 2·0.3 = 0.6 → (−0.1)² = 0.01,
    ∂ℓ/∂log π_θ = 2·(−0.1) = −0.2."""
    policy = t(-1.0).requires_grad_()
    loss, metrics = sppo_loss(policy, t(-1.5), t(0.8), eta=2.0)
    close(loss, 0.01)
    close(torch.autograd.grad(loss, policy)[0], t(-0.2))
    close(metrics["target"], 0.6)


def test_mmd_hand_value_and_reduction_to_sppo():
    """η = 2, α = 0.5 (ηα = 1): target = [1·(−2 − (−1.5)) + 2·(0.8 − ½)] / 2 = (−0.5 + 0.6)/2 = 0.05;
    log-ratio 0.5 → (0.45)² = 0.2025. With α = 0 the loss is SPPO's."""
    close(mmd_loss(t(-1.0), t(-1.5), t(-2.0), t(0.8), eta=2.0, alpha=0.5)[0], 0.2025)
    args = (t(-1.0, -3.0), t(-1.5, -2.0))
    close(
        mmd_loss(*args, t(-2.0, -1.0), t(0.8, 0.1), eta=2.0, alpha=0.0)[0],
        sppo_loss(*args, t(0.8, 0.1), eta=2.0)[0],
    )


def test_mmd_target_is_the_exact_update_up_to_a_constant():
    """With exact win rates, log π_{t+1} − log π_t − target(y) must be the same for every y (the
    normalizer), since π_{t+1} ∝ [π_t π0^{ηα} exp(ηP(y≻π_t))]^{1/(1+ηα)}."""
    P = t(0.5, 0.8, 0.3, 0.2, 0.5, 0.9, 0.7, 0.1, 0.5).view(3, 3)  # intransitive, P + Pᵀ = 1
    log_pt, log_p0 = torch.log(t(0.2, 0.5, 0.3)), torch.log(t(0.6, 0.3, 0.1))
    eta, alpha = 0.7, 0.4
    win = P @ log_pt.exp()  # (3,) P(y ≻ π_t)
    log_next = torch.log_softmax((log_pt + eta * alpha * log_p0 + eta * win) / (1 + eta * alpha), dim=0)
    target = (eta * alpha * (log_p0 - log_pt) + eta * (win - 0.5)) / (1 + eta * alpha)
    residual = log_next - log_pt - target
    close(residual - residual[0], torch.zeros(3, dtype=D))
    close(mmd_loss(log_next, log_pt, log_p0, win, eta=eta, alpha=alpha)[0], residual[0] ** 2)


def test_inpo_hand_value_and_ipo_at_first_iteration():
    """ητ = 0.5·0.4 = 0.2; margins: policy −1 − (−2) = 1, old −1.2 − (−1.8) = 0.6, ref −1.5 − (−1) = −0.5;
    h = 1 − 0.8·0.6 − 0.2·(−0.5) = 0.62; target η/2 = 0.25 → (0.37)² = 0.1369.
    With old = ref, h = Δ and the loss is IPO with β = 1/η."""
    loss, metrics = inpo_loss(t(-1.0), t(-2.0), t(-1.2), t(-1.8), t(-1.5), t(-1.0), eta=0.5, tau=0.4)
    close(loss, 0.1369)
    close(metrics["h"], 0.62)
    pc, pr, rc, rr = t(-1.0, -4.0), t(-2.0, -3.5), t(-1.5, -3.0), t(-1.0, -3.3)
    close(
        inpo_loss(pc, pr, rc, rr, rc, rr, eta=0.5, tau=0.4)[0],
        dpo_loss(pc, pr, rc, rr, beta=2.0, loss_type="ipo")[0],
    )
    with pytest.raises(ValueError):
        inpo_loss(pc, pr, rc, rr, rc, rr, eta=2.0, tau=1.0)


def _inpo_population(theta, log_pt, log_p0, P, eta, tau):
    """(E over y, y' ∼ π_t and the oracle's verdict of the INPO loss, the regression target R)."""
    log_pi = torch.log_softmax(theta, dim=0)
    pt = log_pt.exp()
    win = P @ pt  # P(y ≻ π_t)
    expected, target_loss = 0.0, 0.0
    for a in range(3):
        for b in range(3):
            # (y_w, y_l) = (a, b) comes from the draw (a, b) with a winning or (b, a) with a winning:
            # probability 2 π_t(a) π_t(b) P(a ≻ b) (for a = b: π_t(a)², as P(a ≻ a) = ½)
            loss, _ = inpo_loss(
                log_pi[a : a + 1], log_pi[b : b + 1], log_pt[a : a + 1], log_pt[b : b + 1],
                log_p0[a : a + 1], log_p0[b : b + 1], eta=eta, tau=tau,
            )  # fmt: skip
            expected = expected + 2 * pt[a] * pt[b] * P[a, b] * loss
            h = (
                (log_pi[a] - log_pi[b])
                - (1 - eta * tau) * (log_pt[a] - log_pt[b])
                - eta * tau * (log_p0[a] - log_p0[b])
            )
            target_loss = target_loss + pt[a] * pt[b] * (h - eta * (win[a] - win[b])) ** 2
    return expected, target_loss


def test_inpo_population_gradient_equals_exact_update_regression():
    """The docstring's derivation, checked exactly on 3 actions with an intransitive P: the gradient of
    the expected pair loss equals that of E_{y,y'∼π_t}[(h − η(P(y≻π_t) − P(y'≻π_t)))²] at any θ, and
    vanishes at π_θ = π_{t+1} ∝ π_t^{1−ητ} π0^{ητ} exp(ηP(y≻π_t))."""
    P = t(0.5, 0.8, 0.3, 0.2, 0.5, 0.9, 0.7, 0.1, 0.5).view(3, 3)
    log_pt, log_p0 = torch.log(t(0.2, 0.5, 0.3)), torch.log(t(0.6, 0.3, 0.1))
    eta, tau = 0.8, 0.5
    theta = t(0.3, -0.2, 0.9).requires_grad_()
    expected, target_loss = _inpo_population(theta, log_pt, log_p0, P, eta, tau)
    g_expected = torch.autograd.grad(expected, theta, retain_graph=True)[0]
    g_target = torch.autograd.grad(target_loss, theta)[0]
    assert g_expected.abs().max() > 1e-2
    close(g_expected, g_target, tol=1e-12)

    win = P @ log_pt.exp()
    theta_next = ((1 - eta * tau) * log_pt + eta * tau * log_p0 + eta * win).requires_grad_()
    expected, _ = _inpo_population(theta_next, log_pt, log_p0, P, eta, tau)
    close(torch.autograd.grad(expected, theta_next)[0], torch.zeros(3, dtype=D), tol=1e-12)


def test_inpo_expected_labels_hand_value_and_same_population_gradient():
    """chosen_prob p: target η(p − ½). Hand value with the first test's pair (h = 0.62, η = 0.5), p = 0.9:
    (0.62 − 0.2)² = 0.1764; p = ½ pulls h to 0: 0.3844. Over all pairs of π_t (each unordered pair once,
    weight 2π_t(a)π_t(b), same pair both ways), the expected-label loss has the gradient of the
    sampled-label loss averaged over the oracle's verdict, so the population gradients coincide."""
    args = (t(-1.0), t(-2.0), t(-1.2), t(-1.8), t(-1.5), t(-1.0))
    close(inpo_loss(*args, eta=0.5, tau=0.4, chosen_prob=t(0.9))[0], 0.1764)
    close(inpo_loss(*args, eta=0.5, tau=0.4, chosen_prob=t(0.5))[0], 0.3844)
    close(  # p = 1 is the sampled label
        inpo_loss(*args, eta=0.5, tau=0.4, chosen_prob=t(1.0))[0], inpo_loss(*args, eta=0.5, tau=0.4)[0]
    )
    P = t(0.5, 0.8, 0.3, 0.2, 0.5, 0.9, 0.7, 0.1, 0.5).view(3, 3)
    log_pt, log_p0 = torch.log(t(0.2, 0.5, 0.3)), torch.log(t(0.6, 0.3, 0.1))
    eta, tau = 0.8, 0.5
    theta = t(0.3, -0.2, 0.9).requires_grad_()
    sampled, _ = _inpo_population(theta, log_pt, log_p0, P, eta, tau)
    log_pi, pt = torch.log_softmax(theta, dim=0), log_pt.exp()
    soft = 0.0
    for a in range(3):
        for b in range(3):
            loss, _ = inpo_loss(
                log_pi[a : a + 1], log_pi[b : b + 1], log_pt[a : a + 1], log_pt[b : b + 1],
                log_p0[a : a + 1], log_p0[b : b + 1], eta=eta, tau=tau, chosen_prob=P[a, b : b + 1],
            )  # fmt: skip
            soft = soft + pt[a] * pt[b] * loss
    g_sampled = torch.autograd.grad(sampled, theta, retain_graph=True)[0]
    g_soft = torch.autograd.grad(soft, theta)[0]
    assert g_soft.abs().max() > 1e-2
    close(g_soft, g_sampled, tol=1e-12)


def test_inpo_win_rate_gap_hand_value():
    """win_rate_gap g: target ηg. The first test's pair (h = 0.62, η = 0.5) with g = 0.3: (0.62 − 0.15)² =
    0.2209; g = −0.4: (0.62 + 0.2)² = 0.6724. chosen_prob and win_rate_gap together are refused."""
    args = (t(-1.0), t(-2.0), t(-1.2), t(-1.8), t(-1.5), t(-1.0))
    close(inpo_loss(*args, eta=0.5, tau=0.4, win_rate_gap=t(0.3))[0], 0.2209)
    close(inpo_loss(*args, eta=0.5, tau=0.4, win_rate_gap=t(-0.4))[0], 0.6724)
    with pytest.raises(ValueError, match="at most one"):
        inpo_loss(*args, eta=0.5, tau=0.4, chosen_prob=t(0.9), win_rate_gap=t(0.3))


def test_inpo_win_rate_gap_fits_the_update_for_any_behaviour():
    """Pairs from a behaviour μ ≠ π_t (here mostly π0, and an action π_t has all but dropped): with the
    win-rate gap the population loss E_{y,y'∼μ}[ℓ] is minimized exactly at the online-mirror-descent update
    of prefgame.game.online_md (step η, KL weight τ) — gradient 0 there and positive curvature — while the
    on-policy labels (chosen_prob = P(y ≻ y')) are not: their target is only right for pairs from π_t."""
    from prefgame.game import online_md

    P = t(0.5, 0.9, 0.2, 0.6, 0.1, 0.5, 0.85, 0.4, 0.8, 0.15, 0.5, 0.7, 0.4, 0.6, 0.3, 0.5).view(4, 4)
    pt, p0 = t(0.7, 0.299, 1e-6, 0.000999), t(0.25, 0.25, 0.25, 0.25)
    mu = 0.5 * pt + 0.5 * p0
    eta, tau = 2.0, 0.1
    log_pt, log_p0 = pt.log(), p0.log()
    win = P @ pt  # P(y ≻ π_t)
    exact = online_md(P[None] - 0.5, pt[None], p0[None], tau, eta)[0]  # tabular rule: KL weight τ, step η

    def population(theta, labels):
        log_pi = torch.log_softmax(theta, dim=0)
        total = 0.0
        for a in range(4):
            for b in range(4):
                extra = (
                    {"win_rate_gap": win[a] - win[b : b + 1]} if labels == "gap" else {"chosen_prob": P[a, b : b + 1]}
                )
                loss, _ = inpo_loss(
                    log_pi[a : a + 1], log_pi[b : b + 1], log_pt[a : a + 1], log_pt[b : b + 1],
                    log_p0[a : a + 1], log_p0[b : b + 1], eta=eta, tau=tau, **extra,
                )  # fmt: skip
                total = total + mu[a] * mu[b] * loss
        return total

    theta = exact.log().clone().requires_grad_()
    close(torch.autograd.grad(population(theta, "gap"), theta)[0], torch.zeros(4, dtype=D), tol=1e-12)
    hess = torch.autograd.functional.hessian(lambda th: population(th, "gap"), exact.log())
    assert torch.linalg.eigvalsh(hess)[1:].min() > 1e-3  # one flat direction: the shift of all logits
    assert torch.autograd.grad(population(theta, "prob"), theta)[0].abs().max() > 1e-2
    # and a step of plain gradient descent from π_t moves the dropped action up, as the update does
    start = log_pt.clone().requires_grad_()
    g = torch.autograd.grad(population(start, "gap"), start)[0]
    assert exact[2] > 10 * pt[2] and g[2] < 0


def test_nash_md_surrogate_gradient_is_exact_in_expectation():
    """π = softmax(θ) over 3 actions, π0 = (0.5, 0.3, 0.2), f(y) = E_{y'}P(y ≻ y') − ½, τ = 0.3,
    J = Σ π f − τ KL(π‖π0). With k = log π − log π0:
        ∂J/∂θ_j = π_j (f_j − Σ π f) − τ π_j (k_j − KL)      (softmax Jacobian π_j(δ_ij − π_i))
    The estimator's gradient averaged over y ∼ π (exactly: Σ_y π(y) ∇ℓ(y)) must equal −∂J/∂θ, and
    each sample's loss value is −(f(y) − τ k(y))."""
    tau = 0.3
    theta = t(0.4, -0.3, 0.1).requires_grad_()
    log_p0 = torch.log(t(0.5, 0.3, 0.2))
    pref = t(0.7, 0.4, 0.55)
    log_pi = torch.log_softmax(theta, dim=0)
    pi = log_pi.detach().exp()
    f, k = pref - 0.5, log_pi.detach() - log_p0
    kl = (pi * k).sum()
    analytic = -(pi * (f - (pi * f).sum()) - tau * pi * (k - kl))

    J = (log_pi.exp() * f).sum() - tau * (log_pi.exp() * (log_pi - log_p0)).sum()
    close(torch.autograd.grad(-J, theta, retain_graph=True)[0], analytic)  # the formula itself

    estimate = torch.zeros(3, dtype=D)
    for y in range(3):
        loss, metrics = nash_md_pg_loss(log_pi[y : y + 1], log_p0[y : y + 1], pref[y : y + 1], tau=tau)
        close(loss, -(f[y] - tau * k[y]))
        close(metrics["kl"], k[y])
        estimate += pi[y] * torch.autograd.grad(loss, theta, retain_graph=True)[0]
    close(estimate, analytic)


def test_nash_md_token_level_equals_sequence_level():
    torch.manual_seed(0)
    logps = torch.randn(2, 3, dtype=D).requires_grad_()
    ref = torch.randn(2, 3, dtype=D)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    pref = t(0.6, 0.3)
    tok_loss, _ = nash_md_pg_loss(logps, ref, pref, tau=0.1, mask=mask)
    seq_loss, _ = nash_md_pg_loss(sequence_logprobs(logps, mask), sequence_logprobs(ref, mask), pref, tau=0.1)
    close(tok_loss, seq_loss)
    g_tok = torch.autograd.grad(tok_loss, logps)[0]
    # per token: −c(y)/B on valid tokens, with c = (P − ½) − τ k(y)
    c = (pref - 0.5) - 0.1 * sequence_logprobs(logps.detach() - ref, mask)
    close(g_tok, (-c[:, None] / 2) * mask)


def test_geometric_mixture_is_normalized_power_product():
    """softmax((1−c) log π + c log π0) = π^{1−c} π0^{c} / Σ π^{1−c} π0^{c}, c = 0.3."""
    pi, p0 = t(0.2, 0.5, 0.3), t(0.6, 0.3, 0.1)
    prod = pi**0.7 * p0**0.3
    close(
        geometric_mixture_logprobs(pi.log() + 5.0, p0.log() - 2.0, mixture_coef=0.3),
        (prod / prod.sum()).log(),
    )


# -------------------------------------------------------------------------------------------------- PPO


def test_compute_gae_hand_sequence():
    """γ = 0.9, λ = 0.8 (γλ = 0.72). Row 0: mask (1, 1, 1, 0), r = (0, 0, 1, 5), V = (0.5, 0.4, 0.6, 9);
    the 4th step is outside the response, so V_3 = 0 and it is terminal:
        δ2 = 1 + 0.9·0 − 0.6 = 0.4                   A2 = 0.4
        δ1 = 0 + 0.9·0.6 − 0.4 = 0.14                A1 = 0.14 + 0.72·0.4 = 0.428
        δ0 = 0 + 0.9·0.4 − 0.5 = −0.14               A0 = −0.14 + 0.72·0.428 = 0.16816
    returns = A + V = (0.66816, 0.828, 1.0, 0). Row 1 is the same episode after a masked prompt token:
    mask (0, 1, 1, 1) → A = (0, 0.16816, 0.428, 0.4)."""
    rewards = t(0.0, 0.0, 1.0, 5.0, 7.0, 0.0, 0.0, 1.0).view(2, 4)
    values = t(0.5, 0.4, 0.6, 9.0, 3.0, 0.5, 0.4, 0.6).view(2, 4)
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    adv, ret = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    close(adv, t(0.16816, 0.428, 0.4, 0.0, 0.0, 0.16816, 0.428, 0.4).view(2, 4))
    close(ret, t(0.66816, 0.828, 1.0, 0.0, 0.0, 0.66816, 0.828, 1.0).view(2, 4))
    # λ = 1 gives Monte-Carlo returns: G_t = Σ γ^k r_{t+k} → (0.81, 0.9, 1.0)
    _, mc = compute_gae(rewards, values, mask, gamma=0.9, lam=1.0)
    close(mc[0, :3], t(0.81, 0.9, 1.0))


def test_ppo_policy_loss_clipping_cases():
    """ε = 0.2; (A, ratio) → max(−A·ratio, −A·clip(ratio)):
        (+1, 1.1) inside: −1.1            (+1, 1.5) clipped: max(−1.5, −1.2) = −1.2, no gradient
        (+1, 0.5) max(−0.5, −0.8) = −0.5   (−1, 1.5) max(1.5, 1.2) = 1.5 (unclipped, gradient)
        (−1, 0.5) clipped: max(0.5, 0.8) = 0.8, no gradient      (−1, 0.9) inside: 0.9
    mean = 0.4/6; ∂ℓ/∂log π = −A·ratio/6 where unclipped, else 0; clipfrac 2/6; approx_kl = mean of
    r − 1 − log r."""
    adv = t(1.0, 1.0, 1.0, -1.0, -1.0, -1.0).view(1, 6)
    ratio = t(1.1, 1.5, 0.5, 1.5, 0.5, 0.9).view(1, 6)
    logps = torch.log(ratio).requires_grad_()
    mask = torch.ones(1, 6, dtype=torch.bool)
    loss, metrics = ppo_policy_loss(logps, torch.zeros(1, 6, dtype=D), adv, mask, clip_range=0.2)
    close(loss, 0.4 / 6)
    close(torch.autograd.grad(loss, logps)[0], t(-1.1, 0.0, -0.5, 1.5, 0.0, 0.9).view(1, 6) / 6)
    close(metrics["clipfrac"], 2 / 6)
    close(metrics["approx_kl"], sum(r - 1 - math.log(r) for r in (1.1, 1.5, 0.5, 1.5, 0.5, 0.9)) / 6)


def test_ppo_policy_loss_ignores_garbage_off_mask():
    logps = t(0.1, float("inf")).view(1, 2).requires_grad_()
    loss, _ = ppo_policy_loss(
        logps, t(0.0, 0.0).view(1, 2), t(1.0, 1.0).view(1, 2), torch.tensor([[1, 0]]), clip_range=0.2
    )
    close(loss, -math.exp(0.1))
    grad = torch.autograd.grad(loss, logps)[0]
    close(grad, t(-math.exp(0.1), 0.0).view(1, 2))


def test_ppo_value_loss_clipping_cases():
    """ε_v = 0.2, V_old = 1, V = 1.5 → V_clip = 1.2.  G = 2: errors 0.25 vs 0.64 → 0.64 (clipped wins,
    no gradient).  G = 1: 0.25 vs 0.04 → 0.25.  ℓ = ½ (0.64 + 0.25)/2 = 0.2225;
    ∂ℓ/∂V = (0, ½·2·(1.5 − 1)/2) = (0, 0.25)."""
    values = t(1.5, 1.5).view(1, 2).requires_grad_()
    loss, metrics = ppo_value_loss(
        values, t(1.0, 1.0).view(1, 2), t(2.0, 1.0).view(1, 2), torch.ones(1, 2), clip_range_value=0.2
    )
    close(loss, 0.2225)
    close(torch.autograd.grad(loss, values)[0], t(0.0, 0.25).view(1, 2))
    close(metrics["vf_clipfrac"], 0.5)


def test_kl_penalized_rewards_hand_values():
    """kl_coef 0.1. Row 0: log π − log π0 = (0.5, −0.2), last token 1, score 2:
    r = (−0.05, 0.02 + 2, 0). Row 1: (0.1, 0.3, −0.4), no EOS so score 1 − penalty 1 = 0:
    r = (−0.01, −0.03, 0.04). Metrics: kl = (0.3 + 0)/2, score = (2 + 0)/2."""
    logps = t(0.5, -0.2, 7.0, 0.1, 0.3, -0.4).view(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    rewards, metrics = kl_penalized_rewards(
        t(2.0, 1.0), logps, torch.zeros(2, 3, dtype=D), mask, kl_coef=0.1,
        eos_missing=torch.tensor([False, True]), missing_eos_penalty=1.0,
    )  # fmt: skip
    close(rewards, t(-0.05, 2.02, 0.0, -0.01, -0.03, 0.04).view(2, 3))
    close(metrics["kl"], 0.15)
    close(metrics["score"], 1.0)
    with pytest.raises(ValueError):
        kl_penalized_rewards(t(1.0), t(0.0).view(1, 1), t(0.0).view(1, 1), torch.zeros(1, 1), kl_coef=0.1)


# ------------------------------------------------------------------------------------- GPO, SLiC, listwise


def test_gpo_functions_hand_values_at_three_margins():
    """Δ = 2 (the pair of the DPO tests), so z = 2β. β = 0.25 → z = 0.5; Δ = −2 → z = −0.5; β = 0.75 → z = 1.5.
    logistic log(1+e^{−z}): 0.474076984180, 0.974076984180, softplus(−1.5) = 0.201413277982
    hinge max(0, 1−z): 0.5, 1.5, 0;  squared (1−z)²: 0.25, 2.25, 0.25;  truncated max(0,1−z)²: 0.25, 2.25, 0
    exponential e^{−z}: 0.606530659713, 1.648721270700, e^{−1.5} = 0.223130160148
    savage σ(−z)²: 0.142536956597, 0.387455619000, σ(−1.5)² = 0.182425523806² = 0.033279070730."""
    fwd, bwd = (t(-10.0), t(-12.0), t(-11.0), t(-11.0)), (t(-12.0), t(-10.0), t(-11.0), t(-11.0))
    expected = {
        "logistic": (0.4740769841801067, 0.9740769841801067, math.log1p(math.exp(-1.5))),
        "hinge": (0.5, 1.5, 0.0),
        "squared": (0.25, 2.25, 0.25),
        "truncated_quadratic": (0.25, 2.25, 0.0),
        "exponential": (0.6065306597126334, 1.6487212707001282, math.exp(-1.5)),
        "savage": (0.1425369565965509, 0.3874556190002601, (1 / (1 + math.exp(1.5))) ** 2),
    }
    assert set(expected) == set(GPO_FUNCTIONS)
    for f, (at_half, at_minus_half, at_one_and_half) in expected.items():
        close(gpo_loss(*fwd, beta=0.25, f=f)[0], at_half)
        close(gpo_loss(*bwd, beta=0.25, f=f)[0], at_minus_half)
        close(gpo_loss(*fwd, beta=0.75, f=f)[0], at_one_and_half)
    # label smoothing ε = 0.1 on the hinge at z = 0.5: 0.9·0.5 + 0.1·1.5 = 0.6
    close(gpo_loss(*fwd, beta=0.25, f="hinge", label_smoothing=0.1)[0], 0.6)
    with pytest.raises(ValueError):
        gpo_loss(*fwd, beta=0.25, f="cubic")


def test_gpo_gradients_hand_values_and_autograd_of_the_written_formulas():
    """∂ℓ/∂log π(y_w) = β f'(z), −β f'(z) for log π(y_l). At z = 0.5, β = 0.25: hinge f' = −1 → −0.25;
    squared f' = −2(1 − z) = −1 → −0.25; exponential f' = −e^{−z} → −0.25·0.606530659713;
    savage f' = −2σ(−z)²σ(z) = −2·0.142536956597·0.622459331202 → −0.25·0.177448170900."""
    hand = {
        "hinge": -0.25,
        "squared": -0.25,
        "truncated_quadratic": -0.25,
        "exponential": -0.25 * math.exp(-0.5),
        "savage": -0.25 * 2 * 0.1425369565965509 * 0.6224593312018546,
    }
    for f, g in hand.items():
        pc, pr = t(-10.0).requires_grad_(), t(-12.0).requires_grad_()
        grads = torch.autograd.grad(gpo_loss(pc, pr, t(-11.0), t(-11.0), beta=0.25, f=f)[0], (pc, pr))
        close(grads[0], t(g))
        close(grads[1], t(-g))
    written = {
        "logistic": lambda z: torch.log(1 + torch.exp(-z)),
        "hinge": lambda z: torch.clamp(1 - z, min=0),
        "squared": lambda z: (1 - z) ** 2,
        "exponential": lambda z: torch.exp(-z),
        "truncated_quadratic": lambda z: torch.clamp(1 - z, min=0) ** 2,
        "savage": lambda z: 1 / (1 + torch.exp(z)) ** 2,
    }
    gen = torch.Generator().manual_seed(0)
    inputs = [(torch.randn(6, generator=gen, dtype=D) * 3).requires_grad_() for _ in range(4)]
    for f, formula in written.items():
        loss = gpo_loss(*inputs, beta=0.3, f=f)[0]
        z = 0.3 * ((inputs[0] - inputs[2]) - (inputs[1] - inputs[3]))
        for a, b in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(formula(z).mean(), inputs)):
            close(a, b, 1e-12)
        assert torch.autograd.gradcheck(lambda *x, f=f: gpo_loss(*x, beta=0.3, f=f)[0], inputs)


def test_gpo_logistic_is_dpo_and_gpo_squared_is_ipo():
    """GPO-logistic = DPO (with cDPO smoothing and the length term too); IPO(β) = GPO-squared at
    β' = 2β (length α' = 2α) divided by 4β²: (Δ − 1/(2β))² = (1 − 2βΔ)²/(4β²). Gradients too."""
    gen = torch.Generator().manual_seed(1)
    inputs = [(torch.randn(8, generator=gen, dtype=D) * 2).requires_grad_() for _ in range(4)]
    lengths = {"chosen_lengths": torch.arange(8.0, dtype=D), "rejected_lengths": torch.full((8,), 3.0, dtype=D)}
    for extra in ({}, {"label_smoothing": 0.2}, {"length_alpha": 0.05, **lengths}):
        a, ma = dpo_loss(*inputs, beta=0.1, **extra)
        b, mb = gpo_loss(*inputs, beta=0.1, f="logistic", **extra)
        close(a, b, 1e-14)
        for x, y in zip(torch.autograd.grad(a, inputs), torch.autograd.grad(b, inputs)):
            close(x, y, 1e-14)
        assert ma.keys() == mb.keys()
    for alpha in (0.0, 0.05):
        extra = {"length_alpha": alpha, **lengths} if alpha else {}
        ipo = dpo_loss(*inputs, beta=0.5, loss_type="ipo", **extra)[0]
        extra2 = {"length_alpha": 2 * alpha, **lengths} if alpha else {}
        sq = gpo_loss(*inputs, beta=1.0, f="squared", **extra2)[0] / (4 * 0.5**2)
        close(ipo, sq, 1e-12)
        for x, y in zip(torch.autograd.grad(ipo, inputs), torch.autograd.grad(sq, inputs)):
            close(x, y, 1e-12)


def test_slic_hand_values_gradients_and_gpo_hinge_identity():
    """m = log π(y_w) − log π(y_l) = −10 − (−12) = 2, δ = 3: max(0, 1) = 1; λ = 0.1 adds −0.1·(−10) = 1 → 2.
    ∂/∂log π(y_w) = −1 − 0.1 = −1.1, ∂/∂log π(y_l) = +1. With the reference (π0: −11, −12): m = 2 − 1 = 1,
    hinge 2. Past the margin (δ = 1.5, m = 2) only the SFT term is left: 1, gradient −0.1 and 0.
    With the reference, δ = 1/β and λ = 0 it is the GPO hinge divided by β."""
    pc, pr = t(-10.0).requires_grad_(), t(-12.0).requires_grad_()
    loss, metrics = slic_loss(pc, pr, t(-11.0), t(-12.0), delta=3.0, sft_coef=0.1)
    close(loss, 2.0)
    grads = torch.autograd.grad(loss, (pc, pr))
    close(grads[0], t(-1.1))
    close(grads[1], t(1.0))
    close(metrics["slic/margin"], 2.0)
    close(metrics["slic/active"], 1.0)
    close(slic_loss(pc, pr, t(-11.0), t(-12.0), delta=3.0, use_reference=True)[0], 2.0)
    loss = slic_loss(pc, pr, t(-11.0), t(-12.0), delta=1.5, sft_coef=0.1)[0]
    close(loss, 1.0)
    grads = torch.autograd.grad(loss, (pc, pr))
    close(grads[0], t(-0.1))
    close(grads[1], t(0.0))
    # the SFT target can be another response: −0.1 · (−20) = 2 on top of the hinge 1
    close(slic_loss(pc, pr, t(-11.0), t(-12.0), delta=3.0, sft_coef=0.1, sft_logps=t(-20.0))[0], 3.0)
    gen = torch.Generator().manual_seed(2)
    inputs = [(torch.randn(8, generator=gen, dtype=D) * 3).requires_grad_() for _ in range(4)]
    a = slic_loss(*inputs, delta=1 / 0.4, use_reference=True)[0]
    b = gpo_loss(*inputs, beta=0.4, f="hinge")[0] / 0.4
    close(a, b, 1e-12)
    for x, y in zip(torch.autograd.grad(a, inputs), torch.autograd.grad(b, inputs)):
        close(x, y, 1e-12)


def test_plackett_luce_hand_values_mask_and_normalization():
    """Scores (2, 1, 0) in ranked order: −log P = [log(e²+e+1) − 2] + [log(e+1) − 1] + 0 = 0.720867651963.
    A third entry masked out (any value, even NaN) leaves the K = 2 list (2, 1): softplus(−1) = 0.313261687518.
    The K! orderings' probabilities sum to 1 (the loss is a normalized distribution over rankings)."""
    import itertools

    close(plackett_luce_nll(t(2.0, 1.0, 0.0)[None])[0], 0.7208676519626029)
    scores = t(2.0, 1.0, float("nan")).view(1, 3).requires_grad_()
    mask = torch.tensor([[True, True, False]])
    nll = plackett_luce_nll(scores, mask)
    close(nll[0], softplus(-1.0))
    (grad,) = torch.autograd.grad(nll.sum(), scores)
    close(grad, t(-1 / (1 + math.e), 1 / (1 + math.e), 0.0).view(1, 3))  # ∓σ(−1), 0 for the padding
    s = t(0.3, -1.2, 2.0, 0.5)
    total = sum(math.exp(-float(plackett_luce_nll(s[list(p)][None])[0])) for p in itertools.permutations(range(4)))
    close(total, 1.0, 1e-12)
    loss, metrics = plackett_luce_loss(t(2.0, 1.0, 0.0, 0.0, 3.0, 1.0).view(2, 3))
    # second list (0, 3, 1): pairs 0>3 no, 0>1 no, 3>1 yes; first list all 3 right → 4/6; top1 1/2
    close(metrics["accuracy"], 4 / 6)
    close(metrics["top1"], 0.5)
    close(metrics["margin"], ((2 - 0) + (0 - 1)) / 2)
    per = plackett_luce_nll(t(2.0, 1.0, 0.0, 0.0, 3.0, 1.0).view(2, 3))
    close(loss, per.mean())
    close(plackett_luce_loss(t(2.0, 1.0, 0.0, 0.0, 3.0, 1.0).view(2, 3), normalizer=4)[0], per.sum() / 4)


def test_plackett_luce_with_two_is_bradley_terry_and_gradient_matches_written_formula():
    gen = torch.Generator().manual_seed(3)
    s = (torch.randn(5, 2, generator=gen, dtype=D) * 2).requires_grad_()
    a = plackett_luce_loss(s)[0]
    b = bt_loss(s[:, 0], s[:, 1])[0]
    close(a, b, 1e-14)
    for x, y in zip(torch.autograd.grad(a, s), torch.autograd.grad(b, s)):
        close(x, y, 1e-14)
    # written formula, K = 4 with a ragged list: −Σ_k [s_k − log Σ_{i≥k, real} e^{s_i}]
    s = (torch.randn(3, 4, generator=gen, dtype=D) * 2).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)

    def written(scores):
        total = 0
        for b_, row in enumerate(scores):
            n = int(mask[b_].sum())
            for k in range(n):
                total = total - (row[k] - torch.log(sum(torch.exp(row[i]) for i in range(k, n))))
        return total

    a = plackett_luce_nll(s, mask).sum()
    close(a, written(s), 1e-12)
    for x, y in zip(torch.autograd.grad(a, s), torch.autograd.grad(written(s), s)):
        close(x, y, 1e-12)
    assert torch.autograd.gradcheck(lambda x: plackett_luce_nll(x, mask), (s,))


def test_pro_hand_value_sft_term_and_dpo_identity():
    """log-ratios (1, 0, −1) with β = 1 → rewards (1, 0, −1): [log(e+1+e⁻¹) − 1] + [log(1+e⁻¹) − 0]
    = 0.407605964 + 0.313261688 = 0.720867651963 (the (2, 1, 0) list shifted: PL is shift-invariant).
    λ = 0.5 adds −0.5·log π(y_1) = −0.5·(−4) = 2. K = 2 is DPO; without a reference r = β log π."""
    policy, ref = t(-4.0, -6.0, -8.0).view(1, 3), t(-5.0, -6.0, -7.0).view(1, 3)
    close(pro_loss(policy, ref, beta=1.0)[0], 0.7208676519626029)
    close(pro_loss(policy, ref, beta=1.0, sft_coef=0.5)[0], 0.7208676519626029 + 2.0)
    close(pro_loss(policy, None, beta=0.5)[0], plackett_luce_nll(0.5 * policy)[0])
    gen = torch.Generator().manual_seed(4)
    inputs = [(torch.randn(6, generator=gen, dtype=D) * 3).requires_grad_() for _ in range(4)]
    pro, pm = pro_loss(torch.stack(inputs[:2], -1), torch.stack(inputs[2:], -1), beta=0.2)
    dpo, dm = dpo_loss(*inputs, beta=0.2)
    close(pro, dpo, 1e-14)
    close(pm["rewards/accuracy"], dm["rewards/accuracy"])
    close(pm["rewards/margin"], dm["rewards/margin"])
    for x, y in zip(torch.autograd.grad(pro, inputs), torch.autograd.grad(dpo, inputs)):
        close(x, y, 1e-14)
    # the SFT term's gradient: −λ on log π(y_1) only
    p = policy.clone().requires_grad_()
    g0 = torch.autograd.grad(pro_loss(p, ref, beta=1.0)[0], p)[0]
    g1 = torch.autograd.grad(pro_loss(p, ref, beta=1.0, sft_coef=0.5)[0], p)[0]
    close(g1 - g0, t(-0.5, 0.0, 0.0).view(1, 3))


def test_infonca_and_nca_hand_values_gradients_and_dpo_limit():
    """Rewards R = (1, 0), α = 1: target p = (σ(1), σ(−1)) = (0.731058578630, 0.268941421370). Implicit
    rewards r = (1, −1) (β = 1): InfoNCA = p₁ softplus(−2) + p₂ softplus(2) = 0.664810853783, and its
    gradient in r is softmax(r) − p = σ(2) − σ(1) = 0.149738499... for r₁ (the negative for r₂).
    NCA = p₁ softplus(−1) + p₂ softplus(1) + (softplus(1) + softplus(−1))/2 = 1.395464796406."""
    policy, ref, rewards = t(-4.0, -6.0).view(1, 2), t(-5.0, -5.0).view(1, 2), t(1.0, 0.0).view(1, 2)
    p = policy.clone().requires_grad_()
    loss, metrics = infonca_loss(p, ref, rewards, beta=1.0)
    close(loss, 0.6648108537829628)
    (grad,) = torch.autograd.grad(loss, p)
    g = 1 / (1 + math.exp(-2)) - 1 / (1 + math.exp(-1))
    close(grad, t(g, -g).view(1, 2))
    close(metrics["rewards/accuracy"], 1.0)
    close(nca_loss(policy, ref, rewards, beta=1.0)[0], 1.3954647964064408)
    # a padded third entry (NaN everywhere) changes nothing and gets zero gradient
    pad = lambda x: torch.cat([x, t(float("nan")).view(1, 1)], -1)  # noqa: E731
    mask = torch.tensor([[True, True, False]])
    for fn, value in ((infonca_loss, 0.6648108537829628), (nca_loss, 1.3954647964064408)):
        p3 = pad(policy).requires_grad_()
        loss = fn(p3, pad(ref), pad(rewards), beta=1.0, mask=mask)[0]
        close(loss, value)
        (grad,) = torch.autograd.grad(loss, p3)
        assert torch.isfinite(grad).all() and grad[0, 2] == 0
    # hard target (α → 0) with K = 2: DPO
    gen = torch.Generator().manual_seed(5)
    inputs = [(torch.randn(6, generator=gen, dtype=D) * 3).requires_grad_() for _ in range(4)]
    hard = t(1.0, 0.0).expand(6, 2)
    nca_ = infonca_loss(torch.stack(inputs[:2], -1), torch.stack(inputs[2:], -1), hard, beta=0.3, alpha=1e-3)[0]
    dpo = dpo_loss(*inputs, beta=0.3)[0]
    close(nca_, dpo, 1e-12)
    for x, y in zip(torch.autograd.grad(nca_, inputs), torch.autograd.grad(dpo, inputs)):
        close(x, y, 1e-12)


def test_infonca_and_nca_gradients_match_the_written_formulas():
    gen = torch.Generator().manual_seed(6)
    policy = (torch.randn(3, 4, generator=gen, dtype=D) * 2).requires_grad_()
    ref = torch.randn(3, 4, generator=gen, dtype=D)
    rewards = torch.randn(3, 4, generator=gen, dtype=D)
    beta, alpha = 0.7, 0.5
    r = lambda x: beta * (x - ref)  # noqa: E731
    target = torch.exp(rewards / alpha) / torch.exp(rewards / alpha).sum(-1, keepdim=True)

    def written_infonca(x):
        q = torch.exp(r(x)) / torch.exp(r(x)).sum(-1, keepdim=True)
        return -(target * torch.log(q)).sum(-1).mean()

    def written_nca(x):
        sig = lambda v: 1 / (1 + torch.exp(-v))  # noqa: E731
        return (-(target * torch.log(sig(r(x)))).sum(-1) - torch.log(sig(-r(x))).mean(-1)).mean()

    for fn, written in ((infonca_loss, written_infonca), (nca_loss, written_nca)):
        a = fn(policy, ref, rewards, beta=beta, alpha=alpha)[0]
        close(a, written(policy), 1e-12)
        close(torch.autograd.grad(a, policy)[0], torch.autograd.grad(written(policy), policy)[0], 1e-12)
        assert torch.autograd.gradcheck(lambda x, fn=fn: fn(x, ref, rewards, beta=beta, alpha=alpha)[0], (policy,))
