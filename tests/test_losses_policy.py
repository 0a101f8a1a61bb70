"""Formula tests of the policy-gradient losses and advantages (GOLDEN.md, "Policy-gradient losses").

Expected values are derived by hand in each docstring and recomputed in plain Python, never by the code under test.
"""

import math

import pytest
import torch

from trl.losses import (
    aggregate_loss,
    aggregate_rewards,
    clip_fractions,
    clipped_surrogate,
    clipped_value_loss,
    compute_advantages,
    entropy_mask,
    gae_advantages,
    group_advantages,
    importance_weights,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
    masked_whiten,
    nan_mean_std,
    off_policy_mask,
    policy_loss,
    rloo_advantages,
    sampler_correction_weights,
    sapo_objective,
    sequence_kl,
    vespo_weights,
)


NAN = float("nan")


def t(values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def lengths_mask(lengths, width=None):
    width = width or max(lengths)
    return torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


# --------------------------------------------------------------------------------------------------- advantages


def test_group_advantages_golden():
    """[1, 0, 0, 0]: mean 0.25, Bessel std sqrt((0.75² + 3·0.25²)/3) = 0.5, A = (r − 0.25)/(0.5 + 1e-4)."""
    advantages, stats = group_advantages(t([1.0, 0.0, 0.0, 0.0]), num_generations=4)
    torch.testing.assert_close(advantages, t([0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001]))
    torch.testing.assert_close(advantages, t([1.49970006, -0.49990002, -0.49990002, -0.49990002]))
    assert stats["mean_P"].item() == pytest.approx(0.25)
    assert stats["std_P"].item() == pytest.approx(0.5)
    assert stats["reward"].item() == pytest.approx(0.25)
    assert stats["frac_reward_zero_std"].item() == 0.0


def test_group_advantages_equal_rewards_are_zero_and_counted():
    """Group 1 is constant: zero advantages, one of two groups has zero std."""
    advantages, stats = group_advantages(t([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), num_generations=4)
    assert advantages[:4].abs().max().item() == 0.0
    assert advantages[4].item() == pytest.approx(1.49970006)
    assert stats["frac_reward_zero_std"].item() == 0.5
    assert stats["reward_std"].item() == pytest.approx(0.25)  # mean of group stds [0, 0.5]


def test_group_advantages_ignore_nan_rewards():
    """[1, NaN, 0, 0]: valid [1, 0, 0] → mean 1/3, std sqrt(((2/3)² + 2·(1/3)²)/2) = sqrt(1/3); NaN row → 0."""
    advantages, stats = group_advantages(t([1.0, NAN, 0.0, 0.0]), num_generations=4)
    std = math.sqrt(1 / 3) + 1e-4
    torch.testing.assert_close(advantages, t([(2 / 3) / std, 0.0, (-1 / 3) / std, (-1 / 3) / std]))
    assert stats["std_P"].item() == pytest.approx(math.sqrt(1 / 3))


def test_group_advantages_single_valid_reward_and_all_nan_group():
    """One valid reward has std 0 (no signal); an all-NaN group has NaN mean and zero advantages."""
    advantages, stats = group_advantages(t([NAN, 2.0, NAN, NAN]), num_generations=2)
    assert advantages.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert stats["std_P"].tolist() == [0.0, 0.0]
    assert math.isnan(stats["mean_P"][1].item())


def test_group_advantages_batch_and_none_scaling():
    """Groups [1,0,0,0] and [1,1,1,0]: group means 0.25 and 0.75; batch mean 0.5, batch std sqrt(8·0.25/7)."""
    rewards = t([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    centred = [0.75, -0.25, -0.25, -0.25, 0.25, 0.25, 0.25, -0.75]
    batch_std = math.sqrt(2 / 7)
    batch, stats = group_advantages(rewards, 4, scale_rewards="batch")
    torch.testing.assert_close(batch, t([c / (batch_std + 1e-4) for c in centred]))
    assert stats["reward_std"].item() == pytest.approx(batch_std)
    none, _ = group_advantages(rewards, 4, scale_rewards="none")
    torch.testing.assert_close(none, t(centred))
    torch.testing.assert_close(group_advantages(rewards, 4, scale_rewards=False)[0], none)
    torch.testing.assert_close(group_advantages(rewards, 4, scale_rewards=True)[0], group_advantages(rewards, 4)[0])
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(rewards, 4, scale_rewards="global")
    with pytest.raises(ValueError, match="whole number of groups"):
        group_advantages(rewards, 3)


def test_rloo_advantages_golden_and_identity():
    """A_i = r_i − mean_{j≠i} r_j: [1,0,0,0] → [1, −1/3, −1/3, −1/3] = G/(G−1)·(r − mean(r))."""
    advantages, _ = rloo_advantages(t([1.0, 0.0, 0.0, 0.0]), num_generations=4)
    torch.testing.assert_close(advantages, t([1.0, -1 / 3, -1 / 3, -1 / 3]))
    rewards = torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grouped = rewards.view(-1, 3)
    expected = 3 / 2 * (grouped - grouped.mean(dim=1, keepdim=True))
    torch.testing.assert_close(rloo_advantages(rewards, 3)[0], expected.reshape(-1))


def test_rloo_advantages_nan_and_normalize():
    """[1, NaN, 0, 0]: baselines over scorable siblings: A0 = 1 − 0, A2 = A3 = 0 − 1/2, NaN row 0.
    Normalised [1, −1/3, −1/3, −1/3]: mean 0, Bessel std sqrt((1 + 3/9)/3) = 2/3."""
    advantages, _ = rloo_advantages(t([1.0, NAN, 0.0, 0.0]), 4)
    torch.testing.assert_close(advantages, t([1.0, 0.0, -0.5, -0.5]))
    normalised, _ = rloo_advantages(t([1.0, 0.0, 0.0, 0.0]), 4, normalize=True)
    torch.testing.assert_close(normalised, t([1.0, -1 / 3, -1 / 3, -1 / 3]) / (2 / 3 + 1e-4))


def test_aggregate_rewards_weighted_nansum():
    """Weights [2, 0.5]: [1, NaN] → 2; [NaN, NaN] → NaN (unscorable); [0.5, 2] → 1 + 1 = 2."""
    rewards = t([[1.0, NAN], [NAN, NAN], [0.5, 2.0]])
    total = aggregate_rewards(rewards, [2.0, 0.5])
    assert total[0].item() == 2.0 and math.isnan(total[1].item()) and total[2].item() == 2.0
    torch.testing.assert_close(aggregate_rewards(t([[1.0, 2.0]])), t([3.0]))
    with pytest.raises(ValueError, match="one weight per reward"):
        aggregate_rewards(rewards, [1.0])
    with pytest.raises(ValueError, match="multi_objective_aggregation"):
        aggregate_rewards(rewards, multi_objective_aggregation="mean")


def test_aggregate_rewards_normalize_then_sum():
    """G = 2. Function 1 [1, 0]: mean 0.5, std sqrt(0.5) → ±0.5/(sqrt(0.5) + 1e-4); function 2 [3, 3]: std 0 → 0.
    Weights [1, 2]."""
    rewards = t([[1.0, 3.0], [0.0, 3.0]])
    z = 0.5 / (math.sqrt(0.5) + 1e-4)
    torch.testing.assert_close(aggregate_rewards(rewards, [1.0, 2.0], "normalize_then_sum", 2), t([z, -z]))
    with pytest.raises(ValueError, match="num_generations"):
        aggregate_rewards(rewards, multi_objective_aggregation="normalize_then_sum")


def test_compute_advantages_both_aggregations():
    """sum_then_normalize = group_advantages of the weighted sum. normalize_then_sum on one function, G = 2,
    rewards [1, 0, 2, 0]: s = [a, −a, b, −b], a = 0.5/(sqrt(0.5)+1e-4), b = 1/(sqrt(2)+1e-4); then batch-normalised
    with mean 0 and std sqrt((2a² + 2b²)/3)."""
    rewards_B_F = t([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    advantages, rewards, _ = compute_advantages(rewards_B_F, 2, weights_F=[1.0, 0.5])
    torch.testing.assert_close(rewards, t([1.0, 0.5, 1.5, 0.0]))
    torch.testing.assert_close(advantages, group_advantages(t([1.0, 0.5, 1.5, 0.0]), 2)[0])
    a, b = 0.5 / (math.sqrt(0.5) + 1e-4), 1.0 / (math.sqrt(2) + 1e-4)
    std = math.sqrt((2 * a**2 + 2 * b**2) / 3)
    advantages, rewards, stats = compute_advantages(
        t([[1.0], [0.0], [2.0], [0.0]]), 2, None, "group", "normalize_then_sum"
    )
    torch.testing.assert_close(rewards, t([a, -a, b, -b]))
    torch.testing.assert_close(advantages, t([a, -a, b, -b]) / (std + 1e-4))
    assert stats["frac_reward_zero_std"].item() == 0.0


def test_nan_mean_std_bessel():
    mean, std, count = nan_mean_std(t([[1.0, 2.0, 3.0, NAN]]), dim=1)
    assert mean.item() == 2.0 and std.item() == 1.0 and count.item() == 3


# ------------------------------------------------------------------------------------------------------------- KL


def test_kl_estimators_golden():
    """d = 0.5: k1 = 0.5, k2 = 0.25/2 = 0.125, k3 = e^{−0.5} + 0.5 − 1 = 0.106531; all 0 at d = 0."""
    logps, ref = t([0.0, -1.0]), t([0.0, -1.5])
    assert kl_k1(logps, ref).tolist() == [0.0, 0.5]
    assert kl_k2(logps, ref).tolist() == [0.0, 0.125]
    torch.testing.assert_close(kl_k3(logps, ref), t([0.0, math.exp(-0.5) - 0.5]))
    assert kl_k3(logps, ref)[1].item() == pytest.approx(0.106531, abs=1e-6)
    torch.testing.assert_close(kl_estimate(logps, ref, "k2"), kl_k2(logps, ref))
    with pytest.raises(ValueError, match="k1"):
        kl_estimate(logps, ref, "k4")


def test_kl_estimators_are_unbiased_on_a_toy_categorical():
    """Under x ~ p, E[k1] = E[k3] = KL(p||q) (E_p[q/p] = 1); k2 is biased. Exact expectation, then Monte Carlo."""
    p, q = t([0.5, 0.3, 0.2]), t([0.2, 0.5, 0.3])
    kl = (p * (p / q).log()).sum().item()
    for estimator in (kl_k1, kl_k3):
        assert (p * estimator(p.log(), q.log())).sum().item() == pytest.approx(kl, abs=1e-12)
    assert abs((p * kl_k2(p.log(), q.log())).sum().item() - kl) > 1e-3
    samples = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    for estimator in (kl_k1, kl_k3):
        values = estimator(p.log()[samples], q.log()[samples])
        assert abs(values.mean().item() - kl) < 4 * values.std().item() / math.sqrt(samples.numel())


def test_sequence_kl_sums_masked_tokens():
    """Row 0: d = [0.5, 0.25] → k1 sum 0.75; row 1: one token d = −1, padding −inf ignored."""
    logps = t([[-1.0, -1.0], [-2.0, float("-inf")]])
    ref = t([[-1.5, -1.25], [-1.0, 0.0]])
    mask = lengths_mask([2, 1])
    torch.testing.assert_close(sequence_kl(logps, ref, mask), t([0.75, -1.0]))
    torch.testing.assert_close(
        sequence_kl(logps, ref, mask, "k3"), t([kl_k3(t(0.5), t(0.0)) + kl_k3(t(0.25), t(0.0)), math.exp(1) - 2])
    )


# ------------------------------------------------------------------------------------------------ importance ratios


def test_importance_weights_levels():
    """Log-ratios [0.2, −0.4, 0.8] on row 0 and [0.6] on row 1 (padding holds garbage)."""
    old = t([[-1.0, -1.0, -1.0], [-2.0, 0.0, 0.0]])
    logps = old + t([[0.2, -0.4, 0.8], [0.6, float("nan"), 7.0]])
    mask = lengths_mask([3, 1])
    token = importance_weights(logps, old, mask, "token")
    torch.testing.assert_close(token, t([[math.exp(0.2), math.exp(-0.4), math.exp(0.8)], [math.exp(0.6), 1.0, 1.0]]))
    sequence = importance_weights(logps, old, mask, "sequence")
    torch.testing.assert_close(sequence, t([[math.exp(0.2)] * 3, [math.exp(0.6)] * 3]))
    total = importance_weights(logps, old, mask, "sequence_sum")
    torch.testing.assert_close(total, t([[math.exp(0.6)] * 3, [math.exp(0.6)] * 3]))
    with pytest.raises(ValueError, match="importance_sampling_level"):
        importance_weights(logps, old, mask, "sentence")
    with pytest.raises(ValueError, match="same completion tokens"):
        importance_weights(logps, old[:, :2], mask, "token")


def test_sequence_ratio_is_padding_invariant_and_gspo_token_gradients():
    """More padding columns do not change the GSPO ratio. d ρ_seq[0]/d logp_s = ρ/|o| for every s; GSPO-token has
    the same value but the gradient of token 0 only."""
    old = t([[-1.0, -2.0]])
    logps = t([[-0.5, -2.5]], grad=True)
    padded_logps = torch.cat([logps, t([[float("-inf")] * 3])], dim=1)
    padded_old = torch.cat([old, t([[0.0] * 3])], dim=1)
    short = importance_weights(logps, old, lengths_mask([2]), "sequence")
    long = importance_weights(padded_logps, padded_old, lengths_mask([2], 5), "sequence")
    torch.testing.assert_close(long[:, :2], short)
    (grad_sequence,) = torch.autograd.grad(short[0, 0], logps)
    torch.testing.assert_close(grad_sequence, t([[0.5, 0.5]]))  # ρ = exp(0) = 1, |o| = 2
    token_level = importance_weights(logps, old, lengths_mask([2]), "sequence_token")
    torch.testing.assert_close(token_level, short)
    (grad_token,) = torch.autograd.grad(token_level[0, 0], logps)
    torch.testing.assert_close(grad_token, t([[1.0, 0.0]]))


# --------------------------------------------------------------------------------------------- clipped surrogate


def test_clipped_surrogate_table_and_clip_fractions():
    """ε = 0.2. A = +1: ρ 0.5 → max(−0.5, −0.8) = −0.5; 1 → −1; 1.5 → max(−1.5, −1.2) = −1.2 (high clip).
    A = −1: ρ 0.5 → max(0.5, 0.8) = 0.8 (low clip); 1 → 1; 1.5 → max(1.5, 1.2) = 1.5.
    Gradients in ρ: −A where the unclipped term is selected, 0 where the clip is active."""
    ratio = t([[0.5, 1.0, 1.5], [0.5, 1.0, 1.5]], grad=True)
    loss, stats = clipped_surrogate(ratio, t([1.0, -1.0]), 0.2)
    torch.testing.assert_close(loss, t([[-0.5, -1.0, -1.2], [0.8, 1.0, 1.5]]), rtol=0, atol=1e-12)
    assert stats["clip_ratio/low_mean"].item() == pytest.approx(1 / 6)
    assert stats["clip_ratio/high_mean"].item() == pytest.approx(1 / 6)
    assert stats["clip_ratio/region_mean"].item() == pytest.approx(2 / 6)
    loss.sum().backward()
    torch.testing.assert_close(ratio.grad, t([[-1.0, -1.0, 0.0], [0.0, 1.0, 1.0]]))


def test_clipped_surrogate_epsilon_high_and_delta():
    """Clip-higher: ε_high = 0.28 leaves ρ = 1.25 unclipped for A > 0. δ = 3 caps ρ = 5 at A = −1: loss 3 (not 5);
    for A = +1 the clip at 1.2 already binds: −1.2."""
    loss, stats = clipped_surrogate(t([[1.25]]), t([1.0]), 0.2, epsilon_high=0.28)
    assert loss.item() == pytest.approx(-1.25) and stats["clip_ratio/high_mean"].item() == 0.0
    assert clipped_surrogate(t([[5.0]]), t([-1.0]), 0.2)[0].item() == pytest.approx(5.0)
    assert clipped_surrogate(t([[5.0]]), t([-1.0]), 0.2, delta=3.0)[0].item() == pytest.approx(3.0)
    assert clipped_surrogate(t([[5.0]]), t([1.0]), 0.2, delta=3.0)[0].item() == pytest.approx(-1.2)


def test_clip_fractions_respect_mask():
    """Two tokens high-clipped, one of them padding: 1 of 2 real tokens."""
    stats = clip_fractions(t([[1.5, 1.0], [1.5, 1.0]]), t([1.0, 1.0]), 0.2, mask_B_T=lengths_mask([2, 0]))
    assert stats["clip_ratio/high_mean"].item() == 0.5


# ------------------------------------------------------------------------------------------------- aggregation


GOLDEN_LENGTHS = [10, 20, 30, 40]


def golden_inputs():
    logps = torch.full((4, 40), -1.0, dtype=torch.float64, requires_grad=True)
    advantages, _ = group_advantages(t([1.0, 0.0, 0.0, 0.0]), 4)
    return logps, advantages, lengths_mask(GOLDEN_LENGTHS)


# With A = [0.75, −0.25, −0.25, −0.25]/0.5001, Σ_i(−A_i·|o_i|) = −(7.5 − 0.25·90)/0.5001 = 15/0.5001.
TOKEN_SUM = 15 / 0.5001


@pytest.mark.parametrize(
    ("loss_type", "kwargs", "expected", "golden"),
    [
        # Σ_i mean_t(−A_i) / 4 = −mean(A) = 0 for a whole group.
        ("grpo", {}, 0.0, 0.0),
        # Global token mean: (15/0.5001) / 100.
        ("bnpo", {}, TOKEN_SUM / 100, 0.299940),
        ("dapo", {"num_items_in_batch": 100}, TOKEN_SUM / 100, 0.299940),
        ("dapo", {}, TOKEN_SUM / 100, 0.299940),  # no global count: the local one
        # Same sum over the constant B·L = 4·40 = 160.
        ("dr_grpo", {"max_completion_length": 40}, TOKEN_SUM / 160, 0.187463),
        # Per-sequence sums averaged over the 4 sequences.
        ("luspo", {}, TOKEN_SUM / 4, 7.498500),
    ],
)
def test_aggregation_golden_first_step(loss_type, kwargs, expected, golden):
    """First step, ratio exactly 1 (old = logps.detach()), β = 0, rewards [1,0,0,0], lengths [10, 20, 30, 40]: the
    per-token loss is −A_i; the gradient w.r.t. each completion token is −A_i / normaliser, never all zero."""
    logps, advantages, mask = golden_inputs()
    loss, metrics = policy_loss(logps, None, advantages, mask, loss_type=loss_type, **kwargs)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert loss.item() == pytest.approx(golden, abs=1e-6)
    loss.backward()
    assert logps.grad[mask].abs().min().item() > 0
    assert logps.grad[~mask].abs().max().item() == 0.0
    assert metrics["clip_ratio/region_mean"].item() == 0.0


def test_aggregation_golden_gradients_grpo():
    """grpo: d loss / d logp_it = −A_i / (|o_i| · B)."""
    logps, advantages, mask = golden_inputs()
    policy_loss(logps, None, advantages, mask, loss_type="grpo")[0].backward()
    for i, length in enumerate(GOLDEN_LENGTHS):
        assert logps.grad[i, 0].item() == pytest.approx(-advantages[i].item() / (length * 4))


def test_aggregate_loss_validation_and_padding():
    mask = lengths_mask([1, 2])
    per_token = t([[1.0, float("inf")], [2.0, 4.0]])
    assert aggregate_loss(per_token, mask, "bnpo").item() == pytest.approx(7 / 3)
    assert aggregate_loss(per_token, mask, "grpo").item() == pytest.approx((1 + 3) / 2)
    assert aggregate_loss(per_token, mask, "dapo", num_items_in_batch=14).item() == pytest.approx(7 / 14)
    nothing = torch.zeros_like(mask)
    assert aggregate_loss(per_token, nothing, "dapo", num_items_in_batch=torch.tensor(0)).item() == 0.0
    assert aggregate_loss(per_token, nothing, "grpo").item() == 0.0
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate_loss(per_token, mask, "dr_grpo")
    with pytest.raises(ValueError, match="loss_type"):
        aggregate_loss(per_token, mask, "ppo")


def random_batch(seed=0, batch=4, width=6):
    gen = torch.Generator().manual_seed(seed)
    logps = (-torch.rand(batch, width, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    old = logps.detach() + 0.3 * torch.randn(batch, width, generator=gen, dtype=torch.float64)
    advantages = torch.randn(batch, generator=gen, dtype=torch.float64)
    return logps, old, advantages, lengths_mask([6, 2, 5, 1])


@pytest.mark.parametrize("loss_type", ["dapo", "cispo", "vespo"])
def test_split_batch_with_global_normaliser_equals_unsplit(loss_type):
    """Micro-batches [0:1], [1:3], [3:4] normalised by the global token count N = 14: Σ losses = loss, grads equal."""
    logps, old, advantages, mask = random_batch()
    options = {"loss_type": loss_type, "epsilon_high": 0.28 if loss_type != "cispo" else 5.0, "beta": 0.04}
    ref = old - 0.1
    n = int(mask.sum())
    full, _ = policy_loss(logps, old, advantages, mask, ref_logps_B_T=ref, num_items_in_batch=n, **options)
    (full_grad,) = torch.autograd.grad(full, logps)
    split = sum(
        policy_loss(logps[s], old[s], advantages[s], mask[s], ref_logps_B_T=ref[s], num_items_in_batch=n, **options)[0]
        for s in (slice(0, 1), slice(1, 3), slice(3, 4))
    )
    (split_grad,) = torch.autograd.grad(split, logps)
    torch.testing.assert_close(split, full)
    torch.testing.assert_close(split_grad, full_grad)
    # Local normalisation (bnpo) does not have this property when micro-batches hold different token counts.
    local = [
        policy_loss(logps[s], old[s], advantages[s], mask[s], loss_type="bnpo")[0] for s in (slice(0, 2), slice(2, 4))
    ]
    assert abs((sum(local) / 2).item() - policy_loss(logps, old, advantages, mask, loss_type="bnpo")[0].item()) > 1e-6


# ------------------------------------------------------------------------------------------- policy_loss variants


def test_policy_loss_kl_term_and_bias_correction():
    """ρ = 1, A = 0, d = logp − ref = 0.5 on every token: loss = β·k3(0.5) = 0.1·0.106531 (bnpo).
    With bias correction at ρ = e^{0.1}: the KL term is multiplied by ρ."""
    logps = torch.full((2, 3), -1.0, dtype=torch.float64, requires_grad=True)
    ref = torch.full((2, 3), -1.5, dtype=torch.float64)
    mask = lengths_mask([3, 2])
    k3 = math.exp(-0.5) - 0.5
    loss, metrics = policy_loss(logps, None, t([0.0, 0.0]), mask, loss_type="bnpo", beta=0.1, ref_logps_B_T=ref)
    assert loss.item() == pytest.approx(0.1 * k3) and metrics["kl"].item() == pytest.approx(k3)
    old = logps.detach() - 0.1
    corrected, _ = policy_loss(
        logps, old, t([0.0, 0.0]), mask, loss_type="bnpo", beta=0.1, ref_logps_B_T=ref, use_bias_correction_kl=True
    )
    assert corrected.item() == pytest.approx(0.1 * k3 * math.exp(0.1))
    with pytest.raises(ValueError, match="ref_logps_B_T"):
        policy_loss(logps, None, t([0.0, 0.0]), mask, beta=0.1)


def test_policy_loss_masks_and_sampler_weights():
    """bnpo on 2 tokens with A = 1, ρ = 1 (per-token loss −1): the entropy mask drops token 1's policy term but not
    its KL; sampler weights scale the policy term; the off-policy mask drops whole rows."""
    logps = torch.full((1, 2), -1.0, dtype=torch.float64, requires_grad=True)
    mask = lengths_mask([2])
    ref = logps.detach() - 0.5
    k3 = math.exp(-0.5) - 0.5
    kwargs = {"loss_type": "bnpo", "beta": 0.1, "ref_logps_B_T": ref}
    keep_first = torch.tensor([[True, False]])
    loss, _ = policy_loss(logps, None, t([1.0]), mask, entropy_mask_B_T=keep_first, **kwargs)
    assert loss.item() == pytest.approx((-1.0 + 2 * 0.1 * k3) / 2)
    loss, _ = policy_loss(logps, None, t([1.0]), mask, sampler_weights_B_T=t([[0.5, 2.0]]), **kwargs)
    assert loss.item() == pytest.approx((-0.5 - 2.0 + 2 * 0.1 * k3) / 2)
    loss, _ = policy_loss(logps, None, t([1.0]), mask, off_policy_mask_B=t([0.0]), **kwargs)
    assert loss.item() == pytest.approx(0.1 * k3)


def test_policy_loss_sequence_level_is_padding_invariant_with_sequence_clip_fractions():
    """GSPO: sequence 0 (1 token) has ρ = e^{0.5} > 1.2, sequence 1 (3 tokens) ρ = 1, both A = +1. Clip fractions
    count sequences (1/2, not 1/4 of tokens). Extra padding changes nothing."""
    old = t([[-1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
    logps = (old + t([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])).requires_grad_()
    mask = lengths_mask([1, 3])
    kwargs = {"loss_type": "grpo", "importance_sampling_level": "sequence"}
    loss, metrics = policy_loss(logps, old, t([1.0, 1.0]), mask, **kwargs)
    assert loss.item() == pytest.approx((-1.2 - 1.0) / 2)
    assert metrics["clip_ratio/high_mean"].item() == 0.5
    pad = torch.full((2, 4), float("-inf"), dtype=torch.float64)
    padded, _ = policy_loss(
        torch.cat([logps, pad], 1), torch.cat([old, pad], 1), t([1.0, 1.0]), lengths_mask([1, 3], 7), **kwargs
    )
    torch.testing.assert_close(padded, loss)


def test_policy_loss_rloo_sequence_sum():
    """RLOO: ρ = exp(Σ_t log r_t), loss = mean_i −min(ρA, clip(ρ)A): row 0 Σ = 0.1 → −e^{0.1}·1; row 1 Σ = 0.5,
    A = −1 → max(e^{0.5}, 1.2) = e^{0.5}."""
    old = t([[-1.0, -1.0], [-1.0, -1.0]])
    logps = old + t([[0.05, 0.05], [0.5, 0.0]])
    loss, _ = policy_loss(
        logps, old, t([1.0, -1.0]), lengths_mask([2, 1]), loss_type="grpo", importance_sampling_level="sequence_sum"
    )
    assert loss.item() == pytest.approx((-math.exp(0.1) + math.exp(0.5)) / 2)


def test_policy_loss_cispo():
    """CISPO, ε_max = 5: ρ = [0.5, 6], A = +1: gradient in log π is −sg(min(ρ, 5))·A / N = [−0.25, −2.5] (N = 2);
    one of two tokens truncated."""
    old = t([[-1.0, -3.0]])
    logps = (old + t([[math.log(0.5), math.log(6.0)]])).requires_grad_()
    loss, metrics = policy_loss(logps, old, t([1.0]), lengths_mask([2]), loss_type="cispo", epsilon_high=5.0)
    assert loss.item() == pytest.approx(-(0.5 * logps[0, 0].item() + 5.0 * logps[0, 1].item()) / 2)
    loss.backward()
    torch.testing.assert_close(logps.grad, t([[-0.25, -2.5]]))
    assert metrics["cispo_clip_ratio"].item() == 0.5


def test_sapo_objective():
    """At ρ = 1: −(4/τ)·σ(0)·A = −2A/τ and slope −A. ρ = 1.5, A = −1 uses τ_neg = 1.05: (4/1.05)·σ(0.525)."""
    ratio = t([[1.0, 1.5]], grad=True)
    loss = sapo_objective(ratio, t([[2.0, -1.0]]), 1.0, 1.05)
    torch.testing.assert_close(loss, t([[-4.0, 4 / 1.05 / (1 + math.exp(-0.525))]]))
    loss[0, 0].backward()
    assert ratio.grad[0, 0].item() == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="sapo_temperature"):
        sapo_objective(ratio, t([[1.0, 1.0]]), 0.0, 1.0)


def test_vespo_weights():
    """φ(w) = e^λ·w^k·e^{−λw}. w = 1 → 1. Two tokens of log-ratio log√2 → w = 2: A > 0 (k=2, λ=3): 4e^{−3};
    A < 0 (k=3, λ=2): 8e^{−2}. Padding is ignored; the weight is detached."""
    half_log2 = 0.5 * math.log(2)
    log_ratio = t([[0.0, 0.0, 0.0], [half_log2, half_log2, 9.0], [half_log2, half_log2, 9.0]], grad=True)
    phi = vespo_weights(log_ratio, t([1.0, 1.0, -1.0]), lengths_mask([3, 2, 2]))
    torch.testing.assert_close(phi, t([[1.0], [4 * math.exp(-3)], [8 * math.exp(-2)]]))
    assert not phi.requires_grad


def test_policy_loss_validation():
    logps, old, advantages, mask = random_batch()
    with pytest.raises(ValueError, match="loss_type"):
        policy_loss(logps, old, advantages, mask, loss_type="ppo")
    with pytest.raises(ValueError, match="importance_sampling_level='token'"):
        policy_loss(logps, old, advantages, mask, loss_type="vespo", importance_sampling_level="sequence")
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(logps, old, advantages[:3], mask)
    with pytest.raises(ValueError, match="same completion tokens"):
        policy_loss(logps, old[:, :5], advantages, mask)


def test_policy_loss_per_token_advantages_ppo_style():
    """PPO passes [B, T] advantages; with ρ = 1 and bnpo the loss is −mean over masked tokens of A_t."""
    logps = torch.full((1, 3), -1.0, dtype=torch.float64, requires_grad=True)
    loss, _ = policy_loss(logps, None, t([[1.0, 2.0, 100.0]]), lengths_mask([2], 3), loss_type="bnpo")
    assert loss.item() == pytest.approx(-1.5)


# ------------------------------------------------------------------------------------- token and sequence masks


def test_entropy_mask_top_quantile():
    """Valid entropies sorted [0.1, 0.2, 0.3, 0.5, 0.7, 0.9]; the 0.5 quantile is (0.3 + 0.5)/2 = 0.4, so the top
    half is {0.5, 0.9, 0.7}. Padding (entropy 100) never counts."""
    entropies = t([[0.1, 0.5, 0.9, 0.3], [0.7, 0.2, 100.0, 100.0]])
    mask = lengths_mask([4, 2])
    kept = entropy_mask(entropies, mask, 0.5)
    assert kept.tolist() == [[False, True, True, False], [True, False, False, False]]
    assert entropy_mask(entropies, mask, 1.0).tolist() == mask.tolist()
    assert entropy_mask(entropies, mask, 0.0).tolist() == [[False, False, True, False], [False] * 4]
    with pytest.raises(ValueError, match="top_entropy_quantile"):
        entropy_mask(entropies, mask, 1.5)


def test_off_policy_mask():
    """Drift mean_t(log π_sampler − log π_θ): rows 0.6 (A<0 → dropped), 0.6 (A>0 → kept), 0.4 (A<0 → kept)."""
    logps = torch.zeros(3, 2, dtype=torch.float64)
    sampler = t([[0.6, 0.6], [0.6, 0.6], [0.4, 0.4]])
    keep = off_policy_mask(logps, sampler, t([-1.0, 1.0, -1.0]), lengths_mask([2, 2, 2]), threshold=0.5)
    assert keep.tolist() == [[0.0], [1.0], [1.0]]


# ------------------------------------------------------------------------------------------ sampler correction


def sampler_inputs():
    """old − sampler: row 0 [0.5, 1.5, pad]; row 1 [−0.2, NaN sampler → 0, pad]."""
    old = t([[-1.0, -1.0, 0.0], [-1.0, -1.0, 0.0]])
    sampler = t([[-1.5, -2.5, 5.0], [-0.8, NAN, 5.0]])
    return old, sampler, lengths_mask([2, 2], 3)


def test_sampler_correction_token_modes():
    old, sampler, mask = sampler_inputs()
    weights, stats = sampler_correction_weights(old, sampler, mask, "token_truncate", clip_max=2.0)
    torch.testing.assert_close(weights, t([[math.exp(0.5), 2.0, 0.0], [math.exp(-0.2), 1.0, 0.0]]))
    assert stats["sampling/sampling_logp_difference/mean"].item() == pytest.approx((0.5 + 1.5 + 0.2 + 0.0) / 4)
    assert stats["sampling/sampling_logp_difference/max"].item() == pytest.approx(1.5)
    assert stats["sampling/importance_sampling_ratio/max"].item() == pytest.approx(2.0)
    weights, _ = sampler_correction_weights(old, sampler, mask, "token_mask", clip_max=2.0)
    torch.testing.assert_close(weights, t([[math.exp(0.5), 0.0, 0.0], [math.exp(-0.2), 1.0, 0.0]]))


def test_sampler_correction_sequence_modes_use_the_mean():
    """Row 0: mean(0.5, 1.5) = 1 → e; row 1: mean(−0.2, 0) = −0.1 → e^{−0.1} (the sum would give e^2, e^{−0.2})."""
    old, sampler, mask = sampler_inputs()
    e1, e01 = math.e, math.exp(-0.1)
    weights, stats = sampler_correction_weights(old, sampler, mask, "sequence_truncate", clip_max=3.0)
    torch.testing.assert_close(weights, t([[e1, e1, 0.0], [e01, e01, 0.0]]))
    assert stats["sampling/importance_sampling_ratio/mean"].item() == pytest.approx((e1 + e01) / 2)
    weights, _ = sampler_correction_weights(old, sampler, mask, "sequence_truncate", clip_max=2.0)
    torch.testing.assert_close(weights, t([[2.0, 2.0, 0.0], [e01, e01, 0.0]]))
    weights, _ = sampler_correction_weights(old, sampler, mask, "sequence_mask", clip_max=2.0)
    torch.testing.assert_close(weights, t([[0.0, 0.0, 0.0], [e01, e01, 0.0]]))
    weights, _ = sampler_correction_weights(old, sampler, mask, "sequence_mask", clip_min=0.95, clip_max=2.0)
    assert weights.abs().max().item() == 0.0


def test_sampler_correction_validation():
    old, sampler, mask = sampler_inputs()
    with pytest.raises(ValueError, match="must be below"):
        sampler_correction_weights(old, sampler, mask, "token_mask", clip_min=2.0, clip_max=2.0)
    with pytest.raises(ValueError, match="clip_max"):
        sampler_correction_weights(old, sampler, mask, "token_truncate", clip_max=None)
    with pytest.raises(ValueError, match="vllm_importance_sampling_mode"):
        sampler_correction_weights(old, sampler, mask, "token_clip")


# ---------------------------------------------------------------------------------------------------- PPO pieces


def test_gae_advantages():
    """γ = 1, λ = 0.95. Row 0 r = [0, 0, 1], V = [0.5, 0.6, 0.7]: δ = [0.1, 0.1, 0.3], A2 = 0.3, A1 = 0.1 + 0.95·0.3
    = 0.385, A0 = 0.1 + 0.95·0.385 = 0.46575. Row 1 (2 tokens, padding V = 99 ignored): δ = [0.2, 0.6], A0 = 0.77."""
    rewards = t([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    values = t([[0.5, 0.6, 0.7], [0.2, 0.4, 99.0]])
    advantages, returns = gae_advantages(rewards, values, lengths_mask([3, 2]), gamma=1.0, lam=0.95)
    torch.testing.assert_close(advantages, t([[0.46575, 0.385, 0.3], [0.77, 0.6, 0.0]]))
    torch.testing.assert_close(returns, t([[0.96575, 0.985, 1.0], [0.97, 1.0, 0.0]]))


def test_masked_whiten():
    """[2, 4, 6]: mean 4, Bessel variance 4 → [−1, 0, 1]; without the mean shift → [3, 4, 5]."""
    values, mask = t([[2.0, 4.0, 6.0, 50.0]]), lengths_mask([3], 4)
    torch.testing.assert_close(masked_whiten(values, mask), t([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        masked_whiten(values, mask, shift_mean=False), t([[3.0, 4.0, 5.0, 0.0]]), atol=1e-6, rtol=0
    )


def test_clipped_value_loss():
    """Token 0: V = 1, V_old = 0.5, R = 2, c = 0.2 → clipped V = 0.7: ½·max(1, 1.69) = 0.845 (clipped).
    Token 1: V = 0.6 within range, R = 0: ½·0.36 = 0.18. Mean 0.5125, clip fraction 1/2."""
    loss, clipfrac = clipped_value_loss(t([[1.0, 0.6]]), t([[0.5, 0.5]]), t([[2.0, 0.0]]), lengths_mask([2]), 0.2)
    assert loss.item() == pytest.approx((0.845 + 0.18) / 2)
    assert clipfrac.item() == 0.5
