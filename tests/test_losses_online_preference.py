"""Nash-MD and XPO losses recomputed by hand from the papers' formulas; Online DPO's sigmoid / ipo on summed
log-probs."""

import math

import pytest
import torch

from trl.losses import nash_md_loss, preference_loss, preference_probability, xpo_loss


def test_preference_probability_is_bradley_terry():
    probabilities = preference_probability(torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.0, 0.0, 1.0]))
    expected = [1 / (1 + math.exp(-1)), 0.5, 1 / (1 + math.exp(3))]
    torch.testing.assert_close(probabilities, torch.tensor(expected))


def test_online_dpo_sigmoid_and_ipo_on_summed_logps():
    """Δ = (−1 − (−2)) − (−3 − (−2.5)) = 1.5 with β = 0.1: sigmoid −logσ(0.15), ipo (1.5 − 5)² = 12.25."""
    args = (torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5]))
    sigmoid = preference_loss("sigmoid", *args, beta=0.1)
    assert sigmoid.losses.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.15))), rel=1e-6)
    assert sigmoid.chosen_rewards.item() == pytest.approx(0.1) and sigmoid.rejected_rewards.item() == pytest.approx(
        -0.05
    )
    assert preference_loss("ipo", *args, beta=0.1).losses.item() == pytest.approx(12.25, rel=1e-6)


def test_nash_md_loss_value_and_gradient():
    """Two sequences; the second has one padded position (any value there is ignored).

    Sequence 0: log π = [−1, −2], log π_ref = [−1.5, −1], p = 0.9. Sequence 1: log π = [−0.5, pad], log π_ref =
    [−0.25], p = 0.2. With β = 0.1:
      KL term: Σ_t (log π − log π_ref)·log π = 0.5·(−1) + (−1)·(−2) = 1.5 and (−0.25)·(−0.5) = 0.125;
      score:   (p − ½)·Σ_t log π = 0.4·(−3) = −1.2 and (−0.3)·(−0.5) = 0.15;
      loss = mean(0.1·1.5 + 1.2, 0.1·0.125 − 0.15) = (1.35 − 0.1375) / 2 = 0.60625.
    Gradient w.r.t. log π(y_t) (the log-ratio is stopped): (β·(log π − log π_ref) − (p − ½)) / B.
    """
    logps = torch.tensor([[-1.0, -2.0], [-0.5, float("-inf")]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0], [-0.25, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, metrics = nash_md_loss(logps, ref, mask, torch.tensor([0.9, 0.2]), beta=0.1)
    assert loss.item() == pytest.approx(0.60625, rel=1e-6)
    torch.testing.assert_close(metrics["kl"], torch.tensor([-0.5, -0.25]))
    torch.testing.assert_close(metrics["score"], torch.tensor([-1.2, 0.15]))
    torch.testing.assert_close(metrics["entropy"], torch.tensor([3.0, 0.5]))
    loss.backward()
    expected = torch.tensor([[(0.1 * 0.5 - 0.4) / 2, (0.1 * -1.0 - 0.4) / 2], [(0.1 * -0.25 + 0.3) / 2, 0.0]])
    torch.testing.assert_close(logps.grad, expected)


def test_nash_md_at_the_reference_with_even_preference_is_flat():
    logps = torch.randn(3, 4, requires_grad=True)
    loss, metrics = nash_md_loss(logps, logps.detach().clone(), torch.ones(3, 4), torch.full((3,), 0.5), beta=0.5)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(logps.grad) == 0 and torch.count_nonzero(metrics["kl"]) == 0


def test_nash_md_checks_shapes():
    with pytest.raises(ValueError, match="same shape"):
        nash_md_loss(torch.zeros(2, 3), torch.zeros(2, 2), torch.ones(2, 3), torch.zeros(2), 0.1)
    with pytest.raises(ValueError, match="one value per sequence"):
        nash_md_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(3), 0.1)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_xpo_loss_is_dpo_plus_the_exploration_bonus(loss_type):
    """Pair 0: policy chosen −1, rejected −3, ref −2, −2.5 (Δ = 1.5); reference sample log π_θ = −3 (the rejected
    one). Pair 1: Δ = (−2 + 1) − (−1 + 1) = −1, reference sample −2. β = 0.1, α = 0.01:
    sigmoid dpo = −logσ(βΔ); ipo dpo = (Δ − 5)²; L = dpo + α·log π_θ(y_ref)."""
    chosen, rejected = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    ref_chosen, ref_rejected = torch.tensor([-2.0, -1.0]), torch.tensor([-2.5, -1.0])
    ref_sample = torch.tensor([-3.0, -2.0])
    losses, dpo = xpo_loss(
        chosen, rejected, ref_chosen, ref_rejected, ref_sample, beta=0.1, alpha=0.01, loss_type=loss_type
    )
    deltas = [1.5, -1.0]
    if loss_type == "sigmoid":
        expected_dpo = [math.log(1 + math.exp(-0.1 * d)) for d in deltas]
    else:
        expected_dpo = [(d - 5.0) ** 2 for d in deltas]
    torch.testing.assert_close(dpo.losses, torch.tensor(expected_dpo))
    torch.testing.assert_close(losses, torch.tensor([expected_dpo[0] - 0.03, expected_dpo[1] - 0.02]))
    torch.testing.assert_close(dpo.margins, torch.tensor([0.15, -0.1]))


def test_xpo_loss_rejects_other_loss_types():
    one = torch.zeros(1)
    with pytest.raises(ValueError, match="sigmoid.*ipo"):
        xpo_loss(one, one, one, one, one, beta=0.1, alpha=0.0, loss_type="hinge")
