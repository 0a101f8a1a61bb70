"""Per-token log-probabilities straight from hidden states, without materialising the full logits.

The LM head of a small model is its most expensive layer, and its `[positions, vocab]` output is the largest
activation of a training step. `chunked_selective_log_softmax` projects `chunk_size` positions at a time through the
LM head, keeps only what the loss needs per position (log p(label), the log-normaliser, optionally the entropy and
whether the label is the top-1 token), and drops the chunk's logits. The backward pass recomputes each chunk's
logits, so peak memory is `O(chunk_size * vocab)` instead of `O(positions * vocab)` in both passes, at the price of
one extra LM-head matmul per chunk. Positions whose label is `ignore_index` are dropped before the projection: they
cost nothing.

Gradients, with z = (h W^T + b) / T, p = softmax(z), y the label and H the entropy:
    d log p_y / d z = onehot(y) - p
    d H / d z       = -p * (log p + H)
and d/dh = (dz/T) W, d/dW = (dz/T)^T h, d/db = sum(dz/T) over positions.
"""

from __future__ import annotations

import torch

from .log_softmax import _check_temperature, compute_dtype, softmax_statistics, softmax_statistics_grad


def _matmul_weight(weight_V_H: torch.Tensor, hidden_N_H: torch.Tensor) -> torch.Tensor:
    # Mixed dtypes (e.g. a float32 head under bf16 autocast): the matmuls run in the hidden states' dtype.
    return weight_V_H if weight_V_H.dtype == hidden_N_H.dtype else weight_V_H.to(hidden_N_H.dtype)


def _chunk_logits(
    hidden_C_H: torch.Tensor, weight_V_H: torch.Tensor, bias_V: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    logits_C_V = (hidden_C_H @ weight_V_H.T).to(compute_dtype(hidden_C_H.dtype))
    if bias_V is not None:
        logits_C_V = logits_C_V + bias_V
    return logits_C_V / temperature if temperature != 1.0 else logits_C_V


class ChunkedLogProbFunction(torch.autograd.Function):
    """Autograd function behind [`chunked_selective_log_softmax`]; every row of `hidden_N_H` is a labelled position.

    `forward(hidden_N_H, weight_V_H, bias_V, labels_N, chunk_size, temperature, return_entropy, return_argmax)`
    returns `(logps_N, entropy_N, is_argmax_N)`; `entropy_N` and `is_argmax_N` are empty unless requested, and
    `is_argmax_N` is not differentiable.
    """

    @staticmethod
    def forward(
        ctx,
        hidden_N_H: torch.Tensor,
        weight_V_H: torch.Tensor,
        bias_V: torch.Tensor | None,
        labels_N: torch.Tensor,
        chunk_size: int,
        temperature: float,
        return_entropy: bool,
        return_argmax: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        num_rows, dtype = hidden_N_H.shape[0], compute_dtype(hidden_N_H.dtype)
        logps_N = hidden_N_H.new_empty(num_rows, dtype=dtype)
        logsumexp_N = hidden_N_H.new_empty(num_rows, dtype=dtype)
        entropy_N = hidden_N_H.new_empty(num_rows if return_entropy else 0, dtype=dtype)
        is_argmax_N = hidden_N_H.new_empty(num_rows if return_argmax else 0, dtype=torch.bool)
        matmul_weight_V_H = _matmul_weight(weight_V_H, hidden_N_H)
        for start in range(0, num_rows, chunk_size):
            end = min(start + chunk_size, num_rows)
            logits_C_V = _chunk_logits(hidden_N_H[start:end], matmul_weight_V_H, bias_V, temperature)
            labels_C = labels_N[start:end]
            logps_C, lse_C, entropy_C = softmax_statistics(logits_C_V, labels_C, return_entropy)
            logps_N[start:end], logsumexp_N[start:end] = logps_C, lse_C
            if return_entropy:
                entropy_N[start:end] = entropy_C
            if return_argmax:
                is_argmax_N[start:end] = logits_C_V.argmax(dim=-1) == labels_C
        ctx.save_for_backward(hidden_N_H, weight_V_H, bias_V, labels_N, logsumexp_N, entropy_N)
        ctx.chunk_size, ctx.temperature = chunk_size, temperature
        ctx.mark_non_differentiable(is_argmax_N)
        # Unused outputs then come back as None instead of zero tensors, which lets backward skip their terms.
        ctx.set_materialize_grads(False)
        return logps_N, entropy_N, is_argmax_N

    @staticmethod
    def backward(ctx, grad_logps_N, grad_entropy_N, _grad_is_argmax):
        hidden_N_H, weight_V_H, bias_V, labels_N, logsumexp_N, entropy_N = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        if grad_entropy_N is not None and entropy_N.numel() == 0:
            grad_entropy_N = None
        grad_hidden = torch.zeros_like(hidden_N_H) if need_hidden else None
        accumulate_dtype = compute_dtype(weight_V_H.dtype)
        grad_weight = torch.zeros_like(weight_V_H, dtype=accumulate_dtype) if need_weight else None
        grad_bias = torch.zeros_like(bias_V, dtype=accumulate_dtype) if need_bias else None
        if grad_logps_N is None and grad_entropy_N is None:
            return grad_hidden, grad_weight, grad_bias, None, None, None, None, None

        matmul_weight_V_H = _matmul_weight(weight_V_H, hidden_N_H)
        for start in range(0, hidden_N_H.shape[0], ctx.chunk_size):
            end = min(start + ctx.chunk_size, hidden_N_H.shape[0])
            hidden_C_H = hidden_N_H[start:end]
            logits_C_V = _chunk_logits(hidden_C_H, matmul_weight_V_H, bias_V, ctx.temperature)
            grad_logits_C_V = softmax_statistics_grad(
                logits_C_V,
                labels_N[start:end],
                logsumexp_N[start:end],
                None if grad_logps_N is None else grad_logps_N[start:end],
                None if grad_entropy_N is None else grad_entropy_N[start:end],
                None if grad_entropy_N is None else entropy_N[start:end],
            )
            if ctx.temperature != 1.0:
                grad_logits_C_V /= ctx.temperature
            if need_hidden:
                grad_hidden[start:end] = grad_logits_C_V.to(hidden_C_H.dtype) @ matmul_weight_V_H
            if need_weight:
                grad_weight += (grad_logits_C_V.T.to(hidden_C_H.dtype) @ hidden_C_H).to(accumulate_dtype)
            if need_bias:
                grad_bias += grad_logits_C_V.sum(dim=0)

        if grad_weight is not None:
            grad_weight = grad_weight.to(weight_V_H.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias_V.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def chunked_selective_log_softmax(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    return_argmax: bool = False,
    lm_head_bias: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Per-token `log p(label)` under `softmax((hidden_states @ lm_head_weight.T + lm_head_bias) / temperature)`.

    Same values and gradients (for `hidden_states`, `lm_head_weight` and `lm_head_bias`) as projecting every
    position and calling `log_softmax`, without ever holding more than `chunk_size` positions' logits.

    Args:
        hidden_states (`torch.Tensor`):
            Final hidden states of shape `(..., hidden_size)`, aligned with `labels` (shift them beforehand: the
            hidden state at position t is scored against the token at t + 1).
        lm_head_weight (`torch.Tensor`):
            Output projection of shape `(vocab_size, hidden_size)`.
        labels (`torch.Tensor`):
            Target token ids of shape `hidden_states.shape[:-1]`.
        chunk_size (`int`, *optional*, defaults to `1024`):
            Number of labelled positions projected at once.
        temperature (`float`, *optional*, defaults to `1.0`):
            Divides the logits before the softmax.
        ignore_index (`int`, *optional*, defaults to `-100`):
            Label of positions to skip: they get `0` for every output and no gradient, and are never projected.
        return_entropy (`bool`, *optional*, defaults to `False`):
            Also return the entropy of the (temperature-scaled) distribution at each position (differentiable).
        return_argmax (`bool`, *optional*, defaults to `False`):
            Also return a boolean tensor that is `True` where the label is the top-1 token (`logits.argmax(-1)`),
            for token-accuracy metrics; `False` at ignored positions.
        lm_head_bias (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Bias of the output projection, of shape `(vocab_size,)`.

    Returns:
        `torch.Tensor` or `tuple[torch.Tensor, ...]`: the log-probabilities of shape `labels.shape` (float32 for
        half-precision inputs); with `return_entropy` / `return_argmax`, a tuple `(log_probs, [entropy],
        [is_argmax])` in that order.
    """
    _check_temperature(temperature)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (got {chunk_size}).")
    if hidden_states.shape[:-1] != labels.shape:
        raise ValueError(
            f"hidden_states {tuple(hidden_states.shape)} and labels {tuple(labels.shape)} are misaligned: labels "
            "must have the shape of hidden_states without its last dimension."
        )
    hidden_N_H = hidden_states.reshape(-1, hidden_states.shape[-1])
    labels_N = labels.reshape(-1)
    rows = (labels_N != ignore_index).nonzero().squeeze(-1)
    all_labelled = rows.numel() == labels_N.numel()
    hidden_L_H = hidden_N_H if all_labelled else hidden_N_H.index_select(0, rows)
    labels_L = labels_N if all_labelled else labels_N.index_select(0, rows)
    outputs = ChunkedLogProbFunction.apply(
        hidden_L_H, lm_head_weight, lm_head_bias, labels_L, chunk_size, temperature, return_entropy, return_argmax
    )

    def to_positions(values_L: torch.Tensor) -> torch.Tensor:
        if not all_labelled:
            values_L = values_L.new_zeros(labels_N.numel()).index_copy(0, rows, values_L)
        return values_L.view(labels.shape)

    logps_L, entropy_L, is_argmax_L = outputs
    results = [to_positions(logps_L)]
    if return_entropy:
        results.append(to_positions(entropy_L))
    if return_argmax:
        results.append(to_positions(is_argmax_L))
    return results[0] if len(results) == 1 else tuple(results)
