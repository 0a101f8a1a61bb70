import math

import pytest
import torch

from trl.kernels import (
    ChunkedLogProbFunction,
    chunked_selective_log_softmax,
    entropy_from_logits,
    selective_log_softmax,
    selective_log_softmax_and_entropy,
)
from trl.kernels import log_softmax as log_softmax_module


def full_logps(logits: torch.Tensor, index: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return torch.log_softmax(logits / temperature, dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)


def full_entropy(logits: torch.Tensor) -> torch.Tensor:
    return -(torch.softmax(logits, dim=-1) * torch.log_softmax(logits, dim=-1)).sum(-1)


# ------------------------------------------------------------------------------------ logits-based functions
@pytest.mark.parametrize("block_elements", [1, 40, 1 << 24])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_selective_log_softmax_equals_log_softmax_gather(monkeypatch, block_elements, temperature):
    # block_elements=1 processes one row per block, 40 three rows of 13, 2**24 everything at once.
    monkeypatch.setattr(log_softmax_module, "_BLOCK_ELEMENTS", block_elements)
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 13, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 13, (2, 5))
    weights = torch.randn(2, 5, dtype=torch.float64)
    ours = selective_log_softmax(logits, index, temperature=temperature)
    reference = full_logps(logits, index, temperature)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad((ours * weights).sum(), logits)
    (reference_grad,) = torch.autograd.grad((reference * weights).sum(), logits)
    torch.testing.assert_close(grad, reference_grad, rtol=0, atol=1e-12)


def test_selective_log_softmax_hand_computed():
    # softmax([0, ln 3]) = [1/4, 3/4]: log p(0) = -ln 4, log p(1) = ln(3/4).
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    result = selective_log_softmax(logits, torch.tensor([0, 1]))
    torch.testing.assert_close(result, torch.tensor([-math.log(4.0), math.log(0.75)]))


def test_selective_log_softmax_bf16_is_accurate_and_float32():
    torch.manual_seed(0)
    logits = (torch.randn(3, 4, 50) * 3).to(torch.bfloat16).requires_grad_()
    index = torch.randint(0, 50, (3, 4))
    result = selective_log_softmax(logits, index)
    assert result.dtype == torch.float32
    # The bf16 values themselves, upcast: only float32 rounding separates the two.
    upcast = logits.detach().float().requires_grad_()
    reference = full_logps(upcast, index)
    torch.testing.assert_close(result, reference, rtol=0, atol=1e-5)
    result.sum().backward()
    reference.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits.grad.float(), upcast.grad, rtol=0, atol=1e-2)


def test_selective_log_softmax_row_mask_skips_rows():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7, requires_grad=True)
    index = torch.randint(0, 7, (2, 3))
    row_mask = torch.tensor([[True, False, True], [False, True, True]])
    result = selective_log_softmax(logits, index, row_mask=row_mask)
    expected = torch.where(row_mask, full_logps(logits, index), torch.zeros(()))
    torch.testing.assert_close(result, expected)
    result.sum().backward()
    assert (logits.grad[~row_mask] == 0).all()
    assert (logits.grad[row_mask] != 0).any()


def test_selective_log_softmax_rejects_misaligned_index_and_bad_temperature():
    with pytest.raises(ValueError, match="index"):
        selective_log_softmax(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        selective_log_softmax(torch.randn(2, 5), torch.zeros(2, dtype=torch.long), temperature=0.0)


def test_entropy_from_logits_hand_computed():
    # softmax([0, ln 3]) = [1/4, 3/4]: H = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.5623351446.
    torch.testing.assert_close(entropy_from_logits(torch.tensor([0.0, math.log(3.0)])), torch.tensor(0.5623351446))
    # Uniform over 4 tokens: ln 4; a near one-hot distribution: 0.
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, -1e4, -1e4, -1e4]])
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([math.log(4.0), 0.0]))


@pytest.mark.parametrize("chunk_size", [1, 3, 128])
def test_entropy_from_logits_equals_definition(chunk_size):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, dtype=torch.float64)
    torch.testing.assert_close(entropy_from_logits(logits, chunk_size=chunk_size), full_entropy(logits))
    half = logits.to(torch.bfloat16)
    assert entropy_from_logits(half).dtype == torch.bfloat16  # the input's dtype, as in the reference
    torch.testing.assert_close(entropy_from_logits(half).float(), full_entropy(half.float()), rtol=1e-2, atol=1e-2)


def test_selective_log_softmax_and_entropy_matches_separate_functions():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 9, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 9, (2, 4))
    logps, entropy = selective_log_softmax_and_entropy(logits, index, temperature=0.5)
    torch.testing.assert_close(logps, full_logps(logits, index, 0.5))
    torch.testing.assert_close(entropy, full_entropy(logits / 0.5))
    assert entropy.requires_grad
    _, detached = selective_log_softmax_and_entropy(logits, index, entropy_requires_grad=False)
    assert not detached.requires_grad
    row_mask = torch.tensor([[True, True, False, True], [False, False, True, True]])
    masked_logps, masked_entropy = selective_log_softmax_and_entropy(logits, index, row_mask=row_mask)
    assert (masked_logps[~row_mask] == 0).all() and (masked_entropy[~row_mask] == 0).all()
    torch.testing.assert_close(masked_entropy[row_mask], full_entropy(logits)[row_mask])


@pytest.mark.parametrize("block_elements", [1, 30, 1 << 24])
def test_selective_log_softmax_and_entropy_gradients(monkeypatch, block_elements):
    monkeypatch.setattr(log_softmax_module, "_BLOCK_ELEMENTS", block_elements)
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 9, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 9, (3, 4))
    row_mask = torch.rand(3, 4) > 0.3
    w_logps, w_entropy = torch.randn(2, 3, 4, dtype=torch.float64)
    logps, entropy = selective_log_softmax_and_entropy(logits, index, temperature=0.8, row_mask=row_mask)
    (grad,) = torch.autograd.grad((logps * w_logps).sum() + (entropy * w_entropy).sum(), logits)
    ref_logps = full_logps(logits, index, 0.8) * row_mask
    ref_entropy = full_entropy(logits / 0.8) * row_mask
    (ref_grad,) = torch.autograd.grad((ref_logps * w_logps).sum() + (ref_entropy * w_entropy).sum(), logits)
    torch.testing.assert_close(logps, ref_logps, rtol=0, atol=1e-12)
    torch.testing.assert_close(entropy, ref_entropy, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)
    # Entropy alone (the log-probs unused) also differentiates correctly.
    _, entropy = selective_log_softmax_and_entropy(logits, index)
    (grad,) = torch.autograd.grad(entropy.sum(), logits)
    (ref_grad,) = torch.autograd.grad(full_entropy(logits).sum(), logits)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)


def saved_tensor_sizes(compute) -> list[tuple[int, int]]:
    """(data_ptr, numel) of every tensor autograd saves while `compute` runs."""
    saved = []

    def pack(tensor):
        saved.append((tensor.data_ptr(), tensor.numel()))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        compute()
    return saved


def test_selective_log_softmax_saves_no_logits_sized_tensor():
    logits = torch.randn(6, 5, 40, requires_grad=True)
    index = torch.randint(0, 40, (6, 5))
    reference = saved_tensor_sizes(lambda: full_logps(logits, index))
    assert any(ptr != logits.data_ptr() and numel >= logits.numel() for ptr, numel in reference)
    ours = saved_tensor_sizes(lambda: selective_log_softmax(logits, index))
    # The logits themselves (no copy) and per-row vectors only.
    assert all(ptr == logits.data_ptr() or numel <= index.numel() for ptr, numel in ours)


# ------------------------------------------------------------------------------------- chunked LM-head kernel
def make_head_inputs(bias: bool = True, dtype: torch.dtype = torch.float64):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 5, generator=generator, dtype=dtype).requires_grad_()
    weight = torch.randn(11, 5, generator=generator, dtype=dtype).requires_grad_()
    bias_tensor = torch.randn(11, generator=generator, dtype=dtype).requires_grad_() if bias else None
    labels = torch.randint(0, 11, (3, 7), generator=generator)
    labels[0, :2] = -100  # e.g. prompt positions
    labels[2, 4:] = -100  # e.g. padding; 16 labelled positions remain
    return hidden, weight, bias_tensor, labels


def reference_outputs(hidden, weight, bias, labels, temperature):
    logits = hidden @ weight.T + (bias if bias is not None else 0)
    scaled = logits / temperature
    valid = labels != -100
    logps = full_logps(scaled, labels.clamp(min=0)) * valid
    entropy = full_entropy(scaled) * valid
    is_argmax = (logits.argmax(-1) == labels) & valid
    return logps, entropy, is_argmax


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 16, 100])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("bias", [True, False])
def test_chunked_log_probs_values_and_gradients_equal_full_log_softmax(chunk_size, temperature, bias):
    # 16 labelled positions: chunks of 4 divide them, chunks of 5 leave a remainder, 16 and 100 give one chunk.
    hidden, weight, bias_tensor, labels = make_head_inputs(bias)
    logps, entropy, is_argmax = chunked_selective_log_softmax(
        hidden, weight, labels, chunk_size=chunk_size, temperature=temperature, return_entropy=True,
        return_argmax=True, lm_head_bias=bias_tensor,
    )  # fmt: skip
    ref_logps, ref_entropy, ref_is_argmax = reference_outputs(hidden, weight, bias_tensor, labels, temperature)
    torch.testing.assert_close(logps, ref_logps, rtol=0, atol=1e-12)
    torch.testing.assert_close(entropy, ref_entropy, rtol=0, atol=1e-12)
    assert torch.equal(is_argmax, ref_is_argmax)
    assert (logps[labels == -100] == 0).all()

    generator = torch.Generator().manual_seed(1)
    w_logps, w_entropy = torch.randn(2, 3, 7, generator=generator, dtype=torch.float64)
    params = [hidden, weight] + ([bias_tensor] if bias else [])
    grads = torch.autograd.grad((logps * w_logps).sum() + (entropy * w_entropy).sum(), params)
    ref_grads = torch.autograd.grad((ref_logps * w_logps).sum() + (ref_entropy * w_entropy).sum(), params)
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)
    assert (grads[0][labels == -100] == 0).all()


def test_chunked_log_probs_gradcheck():
    hidden, weight, bias, labels = make_head_inputs()
    rows = labels.reshape(-1) != -100

    def function(h, w, b):
        logps, entropy, _ = ChunkedLogProbFunction.apply(
            h.reshape(-1, 5)[rows], w, b, labels.reshape(-1)[rows], 3, 0.9, True, False
        )
        return logps, entropy

    assert torch.autograd.gradcheck(function, (hidden, weight, bias))


def test_chunked_log_probs_returns_only_log_probs_by_default_and_skips_frozen_head():
    hidden, weight, _, labels = make_head_inputs(bias=False)
    weight = weight.detach()  # a frozen LM head (e.g. PEFT) gets no gradient work
    logps = chunked_selective_log_softmax(hidden, weight, labels, chunk_size=5)
    assert isinstance(logps, torch.Tensor) and logps.shape == labels.shape
    logps.sum().backward()
    torch.testing.assert_close(logps, reference_outputs(hidden, weight, None, labels, 1.0)[0], rtol=0, atol=1e-12)
    assert hidden.grad is not None and weight.grad is None


def test_chunked_log_probs_never_saves_full_logits():
    torch.manual_seed(0)
    num_positions, vocab, hidden_size, chunk = 40, 50, 4, 8
    hidden = torch.randn(num_positions, hidden_size, requires_grad=True)
    weight = torch.randn(vocab, hidden_size, requires_grad=True)
    labels = torch.randint(0, vocab, (num_positions,))

    def largest_saved(compute):
        return max(numel for _, numel in saved_tensor_sizes(compute))

    full = largest_saved(lambda: full_logps(hidden @ weight.T, labels))
    chunked = largest_saved(lambda: chunked_selective_log_softmax(hidden, weight, labels, chunk_size=chunk))
    assert full >= num_positions * vocab  # the test can tell: the plain path keeps [N, V] logits
    assert chunked < num_positions * vocab
    assert chunked <= max(vocab * hidden_size, num_positions * hidden_size)


def test_chunked_log_probs_all_ignored_and_bf16():
    hidden, weight, bias, labels = make_head_inputs()
    logps = chunked_selective_log_softmax(hidden, weight, torch.full_like(labels, -100), lm_head_bias=bias)
    assert (logps == 0).all()
    logps.sum().backward()
    assert (hidden.grad == 0).all() and (weight.grad == 0).all()

    hidden_bf16, weight_bf16 = hidden.detach().to(torch.bfloat16), weight.detach().to(torch.bfloat16)
    logps_bf16 = chunked_selective_log_softmax(hidden_bf16, weight_bf16, labels, chunk_size=4)
    assert logps_bf16.dtype == torch.float32
    reference = reference_outputs(hidden_bf16.float(), weight_bf16.float(), None, labels, 1.0)[0]
    torch.testing.assert_close(logps_bf16, reference, rtol=0, atol=0.1)


def test_chunked_log_probs_validates_arguments():
    hidden, weight, _, labels = make_head_inputs()
    with pytest.raises(ValueError, match="misaligned"):
        chunked_selective_log_softmax(hidden, weight, labels[:, :-1])
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_selective_log_softmax(hidden, weight, labels, chunk_size=0)
    with pytest.raises(ValueError, match="temperature"):
        chunked_selective_log_softmax(hidden, weight, labels, temperature=-1.0)


def test_selective_log_softmax_several_tokens_per_position():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 11, requires_grad=True)
    index_B_T_K = torch.randint(0, 11, (2, 3, 4))
    result = selective_log_softmax(logits, index_B_T_K, temperature=0.7)
    expected = torch.log_softmax(logits / 0.7, -1).gather(-1, index_B_T_K)
    assert result.shape == (2, 3, 4)
    torch.testing.assert_close(result, expected)
    (grad,) = torch.autograd.grad(result.sum(), logits)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(grad, expected_grad)
    # A single column is the plain call; a mismatched leading shape is refused.
    torch.testing.assert_close(selective_log_softmax(logits, index_B_T_K[..., :1]).squeeze(-1),
                               selective_log_softmax(logits, index_B_T_K[..., 0]))  # fmt: skip
    with pytest.raises(ValueError, match="several tokens"):
        selective_log_softmax(logits, torch.zeros(2, 4, 1, dtype=torch.long))


def test_logged_entropy_comes_from_the_same_pass_and_carries_no_gradient():
    """`entropy_requires_grad=False` (a logged metric): the entropy `lse - sum(e * z) / sum(e)` from the log-softmax's
    own `e = exp(z - max)` equals `-sum p log p` (float64 reference; logits offset by 30 so the max shift matters: the
    float32 error is 1.3e-5 here, against 1.3e-4 for `lse - sum(exp(z - lse) * z)`), it is not in the graph, and
    the log-probs' gradient is exactly that of `selective_log_softmax` alone."""
    torch.manual_seed(0)
    logits = (torch.randn(6, 50) * 4 + 30).requires_grad_(True)
    index = torch.randint(0, 50, (6,))
    logps, entropy = selective_log_softmax_and_entropy(logits, index, entropy_requires_grad=False, temperature=0.7)
    assert not entropy.requires_grad and entropy.grad_fn is None
    torch.testing.assert_close(entropy, full_entropy(logits.detach().double() / 0.7).float(), rtol=0, atol=5e-5)
    (grad,) = torch.autograd.grad(logps.sum(), logits)
    (ref_grad,) = torch.autograd.grad(selective_log_softmax(logits, index, 0.7).sum(), logits)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=0)
