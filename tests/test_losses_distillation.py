"""Distillation losses recomputed from their formulas on hand-made distributions."""

import math

import pytest
import torch

from trl.losses import (
    distillation_loss,
    divergence_support,
    generalized_jsd_loss,
    restrict_to_support,
    sampled_reverse_kl,
    token_forward_kl,
    token_reverse_kl,
)


P = [0.7, 0.2, 0.1]
Q = [0.1, 0.3, 0.6]


def logits_of(probs):
    """Logits whose softmax is `probs` (log-probs are logits)."""
    return torch.tensor(probs, dtype=torch.float32).log()


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_forward_and_reverse_kl_match_hand_values():
    """KL(P||Q) = 0.7 ln 7 + 0.2 ln(2/3) + 0.1 ln(1/6) = 1.1019; KL(Q||P) = 0.1 ln(1/7) + 0.3 ln 1.5 + 0.6 ln 6."""
    student, teacher = logits_of(Q).log_softmax(-1), logits_of(P).log_softmax(-1)
    assert token_forward_kl(student, teacher).item() == pytest.approx(kl(P, Q), abs=1e-6)
    assert token_reverse_kl(student, teacher).item() == pytest.approx(kl(Q, P), abs=1e-6)
    assert kl(P, Q) == pytest.approx(1.10187, abs=1e-4)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_beta_limits_are_the_kls(beta):
    """beta = 0: forward KL(teacher || student); beta = 1: reverse KL(student || teacher)."""
    loss = generalized_jsd_loss(logits_of(Q)[None], logits_of(P)[None], beta=beta)
    assert loss.item() == pytest.approx(kl(P, Q) if beta == 0 else kl(Q, P), abs=1e-6)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalized_jsd_matches_formula(beta):
    """M = beta P + (1 - beta) Q; JSD = beta KL(P||M) + (1 - beta) KL(Q||M) (teacher P, student Q)."""
    mixture = [beta * p + (1 - beta) * q for p, q in zip(P, Q)]
    expected = beta * kl(P, mixture) + (1 - beta) * kl(Q, mixture)
    loss = generalized_jsd_loss(logits_of(Q)[None], logits_of(P)[None], beta=beta)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_jsd_at_half_is_symmetric_and_bounded_by_ln2():
    student, teacher = torch.randn(4, 6, 11), torch.randn(4, 6, 11)
    forward = generalized_jsd_loss(student, teacher, beta=0.5)
    swapped = generalized_jsd_loss(teacher, student, beta=0.5)
    torch.testing.assert_close(forward, swapped)
    assert 0 < forward.item() <= math.log(2)


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_identical_inputs_give_zero(beta):
    logits = torch.randn(2, 5, 7)
    assert generalized_jsd_loss(logits, logits.clone(), beta=beta).item() == pytest.approx(0.0, abs=1e-6)


def test_uniform_student_against_one_hot_like_teacher():
    """Uniform student over V = 4 and uniform teacher: 0. Uniform student vs teacher (1, 0, 0, 0) (as logits
    (0, -inf...) approximated by -1e9): forward KL = ln 4, reverse KL = inf-like, so only the forward is checked."""
    uniform = torch.zeros(1, 4)
    assert generalized_jsd_loss(uniform, torch.zeros(1, 4), beta=0.5).item() == pytest.approx(0.0, abs=1e-7)
    peaked = torch.tensor([[0.0, -1e9, -1e9, -1e9]])
    assert generalized_jsd_loss(uniform, peaked, beta=0.0).item() == pytest.approx(math.log(4), abs=1e-5)
    # JSD at 0.5 of (1,0,0,0) vs uniform: M = (5/8, 1/8, 1/8, 1/8);
    # 0.5 [ln(8/5)] + 0.5 [1/4 ln(2/5) + 3/4 ln 2].
    expected = 0.5 * math.log(8 / 5) + 0.5 * (0.25 * math.log(0.4) + 0.75 * math.log(2))
    assert generalized_jsd_loss(uniform, peaked, beta=0.5).item() == pytest.approx(expected, abs=1e-6)


def test_temperature_divides_both_logits():
    student, teacher = torch.randn(3, 8), torch.randn(3, 8)
    scaled = generalized_jsd_loss(student, teacher, beta=0.5, temperature=2.0)
    manual = generalized_jsd_loss(student / 2.0, teacher / 2.0, beta=0.5)
    torch.testing.assert_close(scaled, manual)
    # Higher temperature flattens both distributions: the divergence shrinks.
    assert generalized_jsd_loss(student, teacher, temperature=10.0) < generalized_jsd_loss(student, teacher)


def test_labels_mask_and_reductions():
    """Per-token values d = [d0, d1, d2]; label -100 at position 1."""
    student, teacher = torch.randn(1, 3, 5), torch.randn(1, 3, 5)
    labels = torch.tensor([[4, -100, 2]])
    per_token = generalized_jsd_loss(student, teacher, beta=0.5, reduction="none")
    assert per_token.shape == (1, 3)
    masked = generalized_jsd_loss(student, teacher, labels, beta=0.5, reduction="none")
    torch.testing.assert_close(masked, per_token * torch.tensor([[1.0, 0.0, 1.0]]))
    d0, d2 = per_token[0, 0], per_token[0, 2]
    torch.testing.assert_close(generalized_jsd_loss(student, teacher, labels, beta=0.5), (d0 + d2) / 2)
    torch.testing.assert_close(generalized_jsd_loss(student, teacher, labels, beta=0.5, reduction="sum"), d0 + d2)
    torch.testing.assert_close(
        generalized_jsd_loss(student, teacher, labels, beta=0.5, reduction="mean"), (d0 + d2) / 3
    )
    torch.testing.assert_close(
        generalized_jsd_loss(student, teacher, labels, beta=0.5, num_items_in_batch=8), (d0 + d2) / 8
    )


def test_bad_arguments_are_clear_errors():
    logits = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="beta must be in"):
        generalized_jsd_loss(logits, logits, beta=1.5)
    with pytest.raises(ValueError, match="temperature must be positive"):
        generalized_jsd_loss(logits, logits, temperature=0.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        generalized_jsd_loss(logits, logits, reduction="avg")
    with pytest.raises(ValueError, match="differ in shape"):
        generalized_jsd_loss(logits, torch.zeros(1, 4))


def test_gradients_are_finite_and_point_to_the_teacher():
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(4, 9, generator=generator)
    student = torch.randn(4, 9, generator=generator).requires_grad_()
    for beta in (0.0, 0.5, 1.0):
        student.grad = None
        generalized_jsd_loss(student, teacher, beta=beta).backward()
        assert torch.isfinite(student.grad).all()
    # A few steps of gradient descent on the student's logits lower the divergence.
    start = generalized_jsd_loss(student, teacher, beta=0.5).item()
    optimizer = torch.optim.SGD([student], lr=20.0)
    for _ in range(100):
        optimizer.zero_grad()
        generalized_jsd_loss(student, teacher, beta=0.5).backward()
        optimizer.step()
    assert generalized_jsd_loss(student, teacher, beta=0.5).item() < start / 10


def test_sampled_reverse_kl_is_an_unbiased_estimate():
    """E_{y ~ Q}[log Q(y) - log P(y)] = KL(Q || P)."""
    student, teacher = logits_of(Q).log_softmax(-1), logits_of(P).log_softmax(-1)
    samples = torch.multinomial(student.exp(), 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    estimate = sampled_reverse_kl(student[samples], teacher[samples]).mean()
    assert estimate.item() == pytest.approx(kl(Q, P), abs=0.01)


def test_top_k_support_and_tail():
    """Teacher P = (0.7, 0.2, 0.1), student Q = (0.1, 0.3, 0.6). Forward top-1: the teacher's token 0; reverse top-1
    sampled: the sampled token; union for the JSD. With the tail, top-1 forward KL is over {token 0, tail}:
    0.7 ln(0.7/0.1) + 0.3 ln(0.3/0.9)."""
    student, teacher = logits_of(Q).log_softmax(-1)[None], logits_of(P).log_softmax(-1)[None]
    forward = divergence_support(student, teacher, beta=0.0, top_k=1)
    assert forward.tolist() == [[True, False, False]]
    reverse = divergence_support(student, teacher, beta=1.0, top_k=1, sampled_ids_N=torch.tensor([1]))
    assert reverse.tolist() == [[False, True, False]]
    argmax = divergence_support(student, teacher, beta=1.0, top_k=1, reverse_top_1_mode="argmax")
    assert argmax.tolist() == [[False, False, True]]
    union = divergence_support(student, teacher, beta=0.5, top_k=1, sampled_ids_N=torch.tensor([2]))
    assert union.tolist() == [[True, False, True]]
    restricted = restrict_to_support(teacher, forward, add_tail=True)
    torch.testing.assert_close(restricted.exp()[0, [0, 3]], torch.tensor([0.7, 0.3]))
    loss, per_token = distillation_loss(logits_of(Q)[None], logits_of(P)[None], beta=0.0, top_k=1)
    expected = 0.7 * math.log(0.7 / 0.1) + 0.3 * math.log(0.3 / 0.9)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert per_token.shape == (1,)
    # Without the tail, top-1 on both sides renormalises to the same point mass: 0.
    no_tail, _ = distillation_loss(logits_of(Q)[None], logits_of(P)[None], beta=0.0, top_k=1, add_tail=False)
    assert no_tail.item() == pytest.approx(0.0, abs=1e-6)


def test_full_vocabulary_distillation_loss_equals_generalized_jsd_and_is_nan_free():
    student = torch.randn(5, 13, requires_grad=True)
    teacher = torch.randn(5, 13)
    loss, _ = distillation_loss(student, teacher, beta=0.5, temperature=0.7)
    torch.testing.assert_close(loss, generalized_jsd_loss(student, teacher, beta=0.5, temperature=0.7))
    sampled = torch.randint(0, 13, (5,))
    top_k_loss, _ = distillation_loss(student, teacher, beta=0.5, top_k=3, sampled_ids_N=sampled)
    top_k_loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
