"""Golden values of the SFT objectives (`trl.losses.sft`), recomputed by hand from their formulas."""

import math

import pytest
import torch

from trl.losses import SFT_TOKEN_LOSSES, dft_token_losses, nll_token_losses, supervised_loss


# Three trained tokens with probabilities 0.5, 0.25 and 0.1.
PROBS = [0.5, 0.25, 0.1]


def logps() -> torch.Tensor:
    return torch.tensor([math.log(p) for p in PROBS], requires_grad=True)


def test_nll_is_the_mean_negative_log_probability():
    expected = -(math.log(0.5) + math.log(0.25) + math.log(0.1)) / 3  # 1.9188...
    assert supervised_loss(logps(), "nll").item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(nll_token_losses(torch.tensor([-2.0, -0.5])), torch.tensor([2.0, 0.5]))


def test_dft_weights_each_token_nll_by_its_detached_probability():
    """L = −Σ sg(p_t)·log p_t / N = −(0.5·log 0.5 + 0.25·log 0.25 + 0.1·log 0.1) / 3; dL/dlog p_t = −p_t / N."""
    values = logps()
    loss = supervised_loss(values, "dft")
    expected = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 0.1 * math.log(0.1)) / 3  # 0.3083...
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    (grad,) = torch.autograd.grad(loss, values)
    torch.testing.assert_close(grad, torch.tensor([-0.5, -0.25, -0.1]) / 3)
    torch.testing.assert_close(dft_token_losses(torch.tensor([0.0])), torch.tensor([-0.0]))  # p = 1: no loss


def test_the_normaliser_is_num_items_in_batch_when_given():
    """Two micro-batches of an accumulated batch of 5 tokens sum to the loss of the whole batch."""
    whole = torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0])
    parts = supervised_loss(whole[:2], "nll", 5) + supervised_loss(whole[2:], "nll", torch.tensor(5))
    torch.testing.assert_close(parts, supervised_loss(whole, "nll"))
    assert supervised_loss(whole, "nll").item() == pytest.approx(3.0)


def test_an_empty_micro_batch_gives_zero_inside_the_graph():
    empty = torch.zeros(0, requires_grad=True)
    loss = supervised_loss(empty, "dft")
    assert loss.item() == 0.0 and loss.requires_grad


def test_unknown_loss_type_names_the_choices():
    assert set(SFT_TOKEN_LOSSES) == {"nll", "dft"}
    with pytest.raises(ValueError, match="nll"):
        supervised_loss(logps(), "chunked")
