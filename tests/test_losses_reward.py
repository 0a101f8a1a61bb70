"""Formula tests of the Bradley-Terry reward-model loss, computed by hand in plain Python."""

import math

import pytest
import torch

from trl.losses import bradley_terry_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x)) if x < 30 else x


CHOSEN = [2.0, 0.5, -1.0, 3.0]
REJECTED = [1.0, 1.0, -3.0, 3.0]


def t(values, grad=False):
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def test_plain_bradley_terry():
    """−logσ(x) = softplus(−x); gaps [1, −0.5, 2, 0]."""
    loss, metrics = bradley_terry_loss(t(CHOSEN), t(REJECTED))
    gaps = [c - r for c, r in zip(CHOSEN, REJECTED)]
    assert loss.item() == pytest.approx(sum(softplus(-g) for g in gaps) / 4)
    assert metrics["accuracy"].item() == pytest.approx(0.5)  # a tie is not a win
    assert metrics["margin"].item() == pytest.approx(2.5 / 4)
    assert metrics["min_reward"].item() == -3.0
    assert metrics["max_reward"].item() == 3.0
    assert metrics["mean_reward"].item() == pytest.approx((4.5 + 2.0) / 8)


def test_margin_changes_the_loss_exactly():
    """With margin m the loss is mean(−logσ(r_c − r_r − m))."""
    margin = [0.5, 0.0, 1.0, -2.0]
    loss, metrics = bradley_terry_loss(t(CHOSEN), t(REJECTED), margin=t(margin))
    gaps = [c - r for c, r in zip(CHOSEN, REJECTED)]
    assert loss.item() == pytest.approx(sum(softplus(-(g - m)) for g, m in zip(gaps, margin)) / 4)
    assert metrics["margin"].item() == pytest.approx(2.5 / 4)  # the metric is the raw reward gap
    # A zero margin is the plain loss.
    assert bradley_terry_loss(t(CHOSEN), t(REJECTED), margin=t([0.0] * 4))[0].item() == pytest.approx(
        bradley_terry_loss(t(CHOSEN), t(REJECTED))[0].item()
    )


def test_center_rewards_term():
    """The centring term adds c·mean((r_c + r_r)²) = 0.01·(9 + 2.25 + 16 + 36)/4."""
    plain, _ = bradley_terry_loss(t(CHOSEN), t(REJECTED))
    centred, _ = bradley_terry_loss(t(CHOSEN), t(REJECTED), center_rewards_coefficient=0.01)
    assert (centred - plain).item() == pytest.approx(0.01 * (9 + 2.25 + 16 + 36) / 4)
    both, _ = bradley_terry_loss(t(CHOSEN), t(REJECTED), margin=t([1.0] * 4), center_rewards_coefficient=0.01)
    gaps = [c - r for c, r in zip(CHOSEN, REJECTED)]
    expected = sum(softplus(-(g - 1.0)) for g in gaps) / 4 + 0.01 * (9 + 2.25 + 16 + 36) / 4
    assert both.item() == pytest.approx(expected)


def test_gradients_and_detached_metrics():
    chosen, rejected = t(CHOSEN, grad=True), t(REJECTED, grad=True)
    loss, metrics = bradley_terry_loss(chosen, rejected, center_rewards_coefficient=0.01)
    loss.backward()
    # d/dr_c of softplus(−g)/B is −σ(−g)/B; the centring term adds 2c·(r_c + r_r)/B.
    gaps = [c - r for c, r in zip(CHOSEN, REJECTED)]
    expected = [-1 / (1 + math.exp(g)) / 4 + 2 * 0.01 * (c + r) / 4 for g, c, r in zip(gaps, CHOSEN, REJECTED)]
    torch.testing.assert_close(chosen.grad, t(expected))
    assert all(not value.requires_grad for value in metrics.values())


def test_large_gaps_stay_finite_and_shapes_are_checked():
    loss, _ = bradley_terry_loss(t([1e4, -1e4]), t([-1e4, 1e4]))
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(2e4 / 2)
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(t([1.0, 2.0]), t([1.0]))
    with pytest.raises(ValueError, match="margin"):
        bradley_terry_loss(t([1.0, 2.0]), t([1.0, 0.0]), margin=t([1.0]))
