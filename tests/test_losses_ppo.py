"""PPO's formulas recomputed by hand: per-token KL rewards (k1/k3), GAE against the unrolled recursion, whitening,
the clipped value loss and the clipped surrogate with per-token advantages."""

import math

import pytest
import torch

from trl.losses import clipped_value_loss, gae_advantages, masked_whiten, policy_loss
from trl.losses.ppo import kl_penalized_rewards, last_token_index


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def mask_of(lengths, width):
    return torch.tensor([[1 if i < n else 0 for i in range(width)] for n in lengths], dtype=torch.long)


def test_kl_rewards_k1_and_k3():
    """d = logπ − logπref = [0.5, 0.0, 0.2] (row 0, 3 tokens), [−0.4, ·, ·] (row 1, 1 token); kl_coef 0.1.
    k1: KL = d → r0 = [−0.05, 0, −0.02 + 2], r1 = [0.04 − 1]. k3: KL = e^{−d} − 1 + d."""
    logps = t([[-1.0, -2.0, -0.3], [-1.4, 0.0, 0.0]])
    ref = t([[-1.5, -2.0, -0.5], [-1.0, 9.0, 9.0]])
    mask, scores = mask_of([3, 1], 3), t([2.0, -1.0])
    rewards, kl = kl_penalized_rewards(scores, logps, ref, mask, kl_coef=0.1, kl_estimator="k1")
    torch.testing.assert_close(kl, t([[0.5, 0.0, 0.2], [-0.4, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, t([[-0.05, 0.0, -0.02 + 2.0], [0.04 - 1.0, 0.0, 0.0]]))
    rewards, kl = kl_penalized_rewards(scores, logps, ref, mask, kl_coef=0.1, kl_estimator="k3")
    k3 = [math.exp(-d) - 1 + d for d in (0.5, 0.0, 0.2, -0.4)]
    torch.testing.assert_close(kl, t([[k3[0], k3[1], k3[2]], [k3[3], 0.0, 0.0]]))
    torch.testing.assert_close(rewards, t([[-0.1 * k3[0], 0.0, -0.1 * k3[2] + 2.0], [-0.1 * k3[3] - 1.0, 0, 0]]))
    assert k3[0] == pytest.approx(0.106531, abs=1e-6)
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_penalized_rewards(scores, logps, ref, mask, kl_estimator="k2")


def test_last_token_index():
    assert last_token_index(mask_of([3, 1, 0], 4)).tolist() == [2, 0, -1]


def gae_by_hand(rewards, values, length, gamma, lam):
    """The recursion unrolled in plain Python for one row of `length` tokens, V = 0 after the end."""
    advantages = [0.0] * length
    last = 0.0
    for step in reversed(range(length)):
        next_value = values[step + 1] if step + 1 < length else 0.0
        delta = rewards[step] + gamma * next_value - values[step]
        last = delta + gamma * lam * last
        advantages[step] = last
    return advantages


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (1.0, 0.0)])
def test_gae_matches_the_unrolled_recursion(gamma, lam):
    generator = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 5, generator=generator), torch.randn(3, 5, generator=generator)
    lengths = [5, 3, 1]
    advantages, returns = gae_advantages(rewards, values, mask_of(lengths, 5), gamma=gamma, lam=lam)
    for row, length in enumerate(lengths):
        expected = gae_by_hand(rewards[row].tolist(), values[row].tolist(), length, gamma, lam)
        torch.testing.assert_close(advantages[row, :length], t(expected))
        torch.testing.assert_close(returns[row, :length], t(expected) + values[row, :length])
        assert torch.all(advantages[row, length:] == 0) and torch.all(returns[row, length:] == 0)


def test_gae_with_lambda_one_is_the_discounted_return_minus_the_value():
    """λ = 1: A_t = Σ_k γ^k r_{t+k} − V_t. r = [0, 0, 1], γ = 0.5, V = [0.1, 0.2, 0.3] → A = [0.15, 0.3, 0.7]."""
    advantages, _ = gae_advantages(t([[0.0, 0.0, 1.0]]), t([[0.1, 0.2, 0.3]]), mask_of([3], 3), gamma=0.5, lam=1.0)
    torch.testing.assert_close(advantages, t([[0.25 - 0.1, 0.5 - 0.2, 1.0 - 0.3]]))


def test_whitening_of_advantages_and_rewards():
    """Two rows [1, 3 | pad] and [5, 7]: masked mean 4, Bessel variance (9+1+1+9)/3 = 20/3."""
    values, mask = t([[1.0, 3.0, 100.0], [5.0, 7.0, 100.0]]), mask_of([2, 2], 3)
    std = math.sqrt(20 / 3)
    expected = t([[-3 / std, -1 / std, 0.0], [1 / std, 3 / std, 0.0]])
    torch.testing.assert_close(masked_whiten(values, mask), expected, atol=1e-6, rtol=0)
    kept_mean = torch.where(mask.bool(), expected + 4.0, torch.zeros_like(expected))
    torch.testing.assert_close(masked_whiten(values, mask, shift_mean=False), kept_mean, atol=1e-6, rtol=0)


def test_clipped_value_loss_by_hand():
    """c = 0.2. Token 0: V = 0.0, V_old = 1.0, R = 0.0 → clip(V) = 0.8: ½·max(0, 0.64) = 0.32 (clipped wins).
    Token 1: V = 2.0, V_old = 1.9, R = 3.0: inside the range, ½·1 = 0.5. Token 2 is padding. Mean 0.41, clipfrac ½.
    The gradient flows only through the unclipped term where it is the larger one: dL/dV = [0, (2 − 3)/2]."""
    values = torch.tensor([[0.0, 2.0, 50.0]], requires_grad=True)
    loss, clipfrac = clipped_value_loss(values, t([[1.0, 1.9, 0.0]]), t([[0.0, 3.0, 0.0]]), mask_of([2], 3), 0.2)
    assert loss.item() == pytest.approx(0.41)
    assert clipfrac.item() == 0.5
    loss.backward()
    torch.testing.assert_close(values.grad, t([[0.0, -0.5, 0.0]]))


def test_ppo_policy_loss_with_per_token_advantages():
    """PPO is `policy_loss` with [B, T] advantages and a token mean (bnpo): pg_t = max(−A·ρ, −A·clip(ρ, 0.8, 1.2)).
    ρ = [1.5, 0.5, 1.0], A = [1, 1, −2] → [max(−1.5, −1.2), max(−0.5, −0.8), max(2, 2)] = [−1.2, −0.5, 2]."""
    old = t([[0.0, 0.0, 0.0]])
    logps = torch.log(t([[1.5, 0.5, 1.0]]))
    loss, metrics = policy_loss(logps, old, t([[1.0, 1.0, -2.0]]), mask_of([3], 3), loss_type="bnpo", epsilon=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 2.0) / 3)
    assert metrics["clip_ratio/region_mean"].item() == pytest.approx(1 / 3)
