"""Formula tests of the unpaired preference losses (KTO, APO-zero unpaired, BCO), computed by hand in plain Python."""

import math

import pytest
import torch

from trl.losses import apo_zero_unpaired_loss, bco_loss, bco_udm_weights, kto_kl_estimate, kto_loss


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def t(values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


# Two desirable examples with log-ratios r = [1, -1], one undesirable with r = -1.
POLICY_C, REF_C = [-1.0, -3.0], [-2.0, -2.0]
POLICY_R, REF_R = [-4.0], [-3.0]
# Mismatched (KL) completions: log-ratios [0.5, 1.0], mean 0.75.
POLICY_KL, REF_KL = [-5.0, -6.0], [-5.5, -7.0]


def test_kto_by_hand():
    """z = 0.75. Desirable: 1 − σ(β(r − z)); undesirable: 1 − σ(β(z − r)); weighted and concatenated."""
    beta, w_d, w_u = 0.1, 1.0, 1.5
    out = kto_loss(
        t(POLICY_C),
        t(POLICY_R),
        t(POLICY_KL),
        t(REF_C),
        t(REF_R),
        t(REF_KL),
        beta=beta,
        desirable_weight=w_d,
        undesirable_weight=w_u,
    )
    z = 0.75
    expected = [w_d * (1 - sig(beta * (1 - z))), w_d * (1 - sig(beta * (-1 - z))), w_u * (1 - sig(beta * (z + 1)))]
    torch.testing.assert_close(out.losses, t(expected))
    assert out.kl.item() == pytest.approx(z)
    torch.testing.assert_close(out.chosen_rewards, t([0.1, -0.1]))
    torch.testing.assert_close(out.rejected_rewards, t([-0.1]))


def test_kto_kl_is_clamped_detached_and_can_be_passed_gathered():
    beta = 0.5
    # A negative KL estimate is clamped to 0: the loss becomes 1 − σ(βr) / 1 − σ(−βr).
    negative = kto_loss(
        t(POLICY_C), t(POLICY_R), t([-6.0]), t(REF_C), t(REF_R), t([-5.0]), beta=beta
    )  # estimate −1 → 0
    expected = [1 - sig(beta * 1), 1 - sig(beta * -1), 1 - sig(beta * 1)]
    torch.testing.assert_close(negative.losses, t(expected))
    assert negative.kl.item() == 0.0
    # A gathered estimate replaces the local one; the KL log-probs may then be omitted.
    gathered = kto_loss(t(POLICY_C), t(POLICY_R), None, t(REF_C), t(REF_R), None, beta=beta, kl=torch.tensor(2.0))
    expected = [1 - sig(beta * (1 - 2)), 1 - sig(beta * (-1 - 2)), 1 - sig(beta * (2 + 1))]
    torch.testing.assert_close(gathered.losses, t(expected))
    assert kto_kl_estimate(t(POLICY_KL), t(REF_KL)).item() == pytest.approx(0.75)
    # No gradient flows through the reference point.
    policy_kl = t(POLICY_KL, grad=True)
    policy_c = t(POLICY_C, grad=True)
    out = kto_loss(policy_c, t(POLICY_R), policy_kl, t(REF_C), t(REF_R), t(REF_KL), beta=beta)
    out.losses.sum().backward()
    assert policy_kl.grad is None
    assert policy_c.grad is not None and policy_c.grad.abs().sum() > 0
    assert not out.kl.requires_grad and not out.chosen_rewards.requires_grad
    with pytest.raises(ValueError, match="pass `kl`"):
        kto_loss(t(POLICY_C), t(POLICY_R), None, t(REF_C), t(REF_R), None, beta=beta)


def test_kto_with_only_desirable_examples():
    out = kto_loss(t(POLICY_C), t([]), None, t(REF_C), t([]), None, beta=0.1, kl=0.0)
    torch.testing.assert_close(out.losses, t([1 - sig(0.1), 1 - sig(-0.1)]))
    assert out.rejected_rewards.numel() == 0


def test_kto_at_initialisation_is_one_half():
    """Policy == reference and z = 0: every loss is 1 − σ(0) = 0.5."""
    logps = t([-3.0, -8.0])
    out = kto_loss(logps, logps.clone(), logps.clone(), logps.clone(), logps.clone(), logps.clone(), beta=0.1)
    torch.testing.assert_close(out.losses, t([0.5] * 4))


def test_apo_zero_unpaired_by_hand():
    beta = 0.2
    out = apo_zero_unpaired_loss(
        t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R), beta=beta, desirable_weight=2.0, undesirable_weight=0.5
    )
    expected = [2.0 * (1 - sig(beta * 1)), 2.0 * (1 - sig(beta * -1)), 0.5 * sig(beta * -1)]
    torch.testing.assert_close(out.losses, t(expected))
    assert out.kl is None


def test_bco_by_hand():
    """Rewards ρ = β·r: desirable [0.1, -0.1], undesirable [-0.1]; with δ = 0.05."""
    beta, delta = 0.1, 0.05
    out = bco_loss(t(POLICY_C), t(POLICY_R), t(REF_C), t(REF_R), beta=beta, delta=torch.tensor(delta))
    expected = [-logsig(0.1 - delta), -logsig(-0.1 - delta), -logsig(-(-0.1 - delta))]
    torch.testing.assert_close(out.losses, t(expected))
    assert out.reward_mean.item() == pytest.approx((0.1 - 0.1 - 0.1) / 3)
    torch.testing.assert_close(out.chosen_rewards, t([0.1, -0.1]))


def test_bco_weights_and_udm_density_ratios():
    beta = 0.1
    weights = bco_udm_weights(t([0.5, 0.99, 0.1]), min_density_ratio=0.5, max_density_ratio=10.0)
    # p/(1−p): 1, 99 → 10, 0.111 → 0.5.
    torch.testing.assert_close(weights, t([0.5 / (0.5 + 1e-8), 10.0, 0.5]))
    out = bco_loss(
        t(POLICY_C),
        t(POLICY_R),
        t(REF_C),
        t(REF_R),
        beta=beta,
        chosen_weights=t([1.0, 3.0]),
        rejected_weights=t([10.0]),
    )
    expected = [-logsig(0.1), 3.0 * -logsig(-0.1), 10.0 * -logsig(0.1)]
    torch.testing.assert_close(out.losses, t(expected))


def test_bco_gradients_and_empty_batch():
    chosen = t(POLICY_C, grad=True)
    out = bco_loss(chosen, t(POLICY_R), t(REF_C), t(REF_R), beta=0.1, delta=0.0)
    out.losses.sum().backward()
    assert chosen.grad.abs().sum() > 0
    assert not out.reward_mean.requires_grad and not out.chosen_rewards.requires_grad
    empty = bco_loss(t([]), t([]), t([]), t([]), beta=0.1)
    assert empty.losses.numel() == 0 and empty.reward_mean is None


def test_large_log_ratios_stay_finite():
    big = t([1e4, -1e4], grad=True)
    zeros = t([0.0, 0.0])
    for out in (
        kto_loss(big, big, None, zeros, zeros, None, beta=1.0, kl=1e4),
        apo_zero_unpaired_loss(big, big, zeros, zeros, beta=1.0),
        bco_loss(big, big, zeros, zeros, beta=1.0, delta=5.0),
    ):
        assert torch.isfinite(out.losses).all()
        big.grad = None
        out.losses.sum().backward()
        assert torch.isfinite(big.grad).all()
