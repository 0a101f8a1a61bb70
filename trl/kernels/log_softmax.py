"""Per-token log-probabilities and entropies from logits that are already computed.

A `[batch, seq, vocab]` logits tensor is processed a block of rows at a time, so the temporaries that `log_softmax`
or `logsumexp` need (a full copy of the logits, or a float32 copy of half-precision logits) never exist for the
whole tensor at once. The autograd function saves only the logits it was given (no copy) and one log-normaliser per
row, and its backward writes the gradient block by block: it is both lighter and faster than
`log_softmax(...).gather(...)`, whose backward keeps a full-size log-softmax output.

Results are returned in float32 for half-precision logits (float64 stays float64): log-probs feed ratios and sums
where bf16 rounding (8 bits of mantissa) would show.

Gradients, with z = logits / T, p = softmax(z), y the selected token and H the entropy:
    d log p_y / d z = onehot(y) - p
    d H / d z       = -p * (log p + H)
"""

from __future__ import annotations

import torch


# Elements of one working block (64 MiB in float32): large enough that small vocabularies run in one pass, small
# enough that a 150k-entry vocabulary works on a few hundred rows at a time.
_BLOCK_ELEMENTS = 1 << 24


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the softmax is computed and returned in: float32 for half precision, else `dtype`."""
    return torch.promote_types(dtype, torch.float32)


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {temperature}); use 1.0 for the unscaled distribution.")


def _flatten(logits: torch.Tensor, index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    flat_logits = logits.reshape(-1, logits.shape[-1])
    if index is None:
        return flat_logits, None
    if index.shape != logits.shape[:-1]:
        raise ValueError(
            f"index has shape {tuple(index.shape)} but logits have shape {tuple(logits.shape)}: index must match "
            "the logits without their last (vocabulary) dimension."
        )
    return flat_logits, index.reshape(-1)


def _selected_rows(row_mask: torch.Tensor | None, shape: torch.Size, device: torch.device) -> torch.Tensor | None:
    if row_mask is None:
        return None
    if row_mask.shape != shape:
        raise ValueError(f"row_mask has shape {tuple(row_mask.shape)}, expected {tuple(shape)} (the index shape).")
    return row_mask.reshape(-1).to(device=device, dtype=torch.bool).nonzero().squeeze(-1)


def _blocks(num_rows: int, vocab_size: int, block_rows: int | None = None):
    step = block_rows or max(1, _BLOCK_ELEMENTS // max(vocab_size, 1))
    for start in range(0, num_rows, step):
        yield start, min(start + step, num_rows)


def _scaled_block(
    flat_logits: torch.Tensor, rows: torch.Tensor | None, start: int, end: int, temperature: float
) -> torch.Tensor:
    block = flat_logits[start:end] if rows is None else flat_logits.index_select(0, rows[start:end])
    block = block.to(compute_dtype(block.dtype))
    return block / temperature if temperature != 1.0 else block


def _scatter_rows(values: list[torch.Tensor], rows: torch.Tensor | None, num_rows: int, like: torch.Tensor):
    """Concatenate per-block results; with a row selection, place them in a zero vector of all rows."""
    dtype = compute_dtype(like.dtype)
    flat = torch.cat(values) if values else like.new_zeros(0, dtype=dtype)
    if rows is None:
        return flat
    return like.new_zeros(num_rows, dtype=dtype).index_copy(0, rows, flat)


def softmax_statistics(
    logits_C_V: torch.Tensor, index_C: torch.Tensor, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`(log p(index), logsumexp, entropy or None)` of each row of already scaled logits.

    With the entropy, one `exp` serves both: `e = exp(z - m)` (m the row maximum, set to 0 in rows whose maximum is
    infinite, as `logsumexp` does) gives `lse = m + log sum(e)` and `H = lse - sum(e * z) / sum(e)`, with `e * z`
    written over `e`: one block-sized temporary in all.
    """
    if with_entropy:
        max_C = logits_C_V.amax(dim=-1)
        max_C = max_C.masked_fill(max_C.isinf(), 0)
        exp_C_V = torch.sub(logits_C_V, max_C.unsqueeze(-1)).exp_()
        sum_C = exp_C_V.sum(dim=-1)
        lse_C = sum_C.log().add_(max_C)
        entropy_C = lse_C - exp_C_V.mul_(logits_C_V).sum(dim=-1).div_(sum_C)
    else:
        lse_C, entropy_C = logits_C_V.logsumexp(dim=-1), None
    logps_C = logits_C_V.gather(-1, index_C.unsqueeze(-1)).squeeze(-1) - lse_C
    return logps_C, lse_C, entropy_C


def softmax_statistics_grad(
    logits_C_V: torch.Tensor,
    index_C: torch.Tensor,
    lse_C: torch.Tensor,
    grad_logps_C: torch.Tensor | None,
    grad_entropy_C: torch.Tensor | None = None,
    entropy_C: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient with respect to the (scaled) logits of `sum(grad_logps * log p(index) + grad_entropy * H)`.

    Works in two block-sized buffers (one without the entropy term), the first being `out` when given (a block of
    the caller's gradient, of the logits' shape and dtype); `logits_C_V` itself is left untouched (it may be a view of
    the caller's logits).
    """
    logps_C_V = torch.sub(logits_C_V, lse_C.unsqueeze(-1), out=out)
    if grad_entropy_C is None:
        grad_C_V = logps_C_V.exp_().mul_(-grad_logps_C.unsqueeze(-1))
    else:
        probs_C_V = logps_C_V.exp()
        grad_C_V = logps_C_V.add_(entropy_C.unsqueeze(-1)).mul_(probs_C_V).mul_(-grad_entropy_C.unsqueeze(-1))
        if grad_logps_C is not None:
            grad_C_V.sub_(probs_C_V.mul_(grad_logps_C.unsqueeze(-1)))
    if grad_logps_C is not None:
        grad_C_V.scatter_add_(-1, index_C.unsqueeze(-1), grad_logps_C.unsqueeze(-1).to(grad_C_V.dtype))
    return grad_C_V


class _SelectiveLogSoftmaxFunction(torch.autograd.Function):
    """Row-blocked log p(index) (and entropy) of `softmax(logits / temperature)` over the rows `rows` (all if None).

    `entropy` is `None` (not computed), `"logged"` (computed in the same pass, not differentiable: no gradient flows
    through it and backward never computes its term) or `"differentiable"`.
    """

    @staticmethod
    def forward(ctx, flat_logits, flat_index, rows, temperature, entropy):
        num_rows = flat_logits.shape[0] if rows is None else rows.numel()
        logps, lses, entropies = [], [], []
        for start, end in _blocks(num_rows, flat_logits.shape[-1]):
            block = _scaled_block(flat_logits, rows, start, end, temperature)
            index_C = _block_index(flat_index, rows, start, end)
            logps_C, lse_C, entropy_C = softmax_statistics(block, index_C, entropy is not None)
            logps.append(logps_C)
            lses.append(lse_C)
            entropies.append(entropy_C)
        logps_N = _scatter_rows(logps, None, num_rows, flat_logits)
        lse_N = _scatter_rows(lses, None, num_rows, flat_logits)
        entropy_N = _scatter_rows(entropies, None, num_rows, flat_logits) if entropy else lse_N.new_empty(0)
        # Backward only needs the entropy for its gradient term.
        saved_entropy_N = entropy_N if entropy == "differentiable" else lse_N.new_empty(0)
        ctx.save_for_backward(flat_logits, flat_index, rows, lse_N, saved_entropy_N)
        if entropy != "differentiable":
            ctx.mark_non_differentiable(entropy_N)
        ctx.temperature = temperature
        ctx.set_materialize_grads(False)
        return logps_N, entropy_N

    @staticmethod
    def backward(ctx, grad_logps_N, grad_entropy_N):
        flat_logits, flat_index, rows, lse_N, entropy_N = ctx.saved_tensors
        if entropy_N.numel() == 0:
            grad_entropy_N = None
        if grad_logps_N is None and grad_entropy_N is None:
            return torch.zeros_like(flat_logits), None, None, None, None
        # Every row is written below unless only some rows were selected.
        grad_logits = torch.empty_like(flat_logits) if rows is None else torch.zeros_like(flat_logits)
        # Blocks of all rows computed in the logits' dtype are written in place, without a copy.
        in_place = rows is None and compute_dtype(flat_logits.dtype) == flat_logits.dtype
        temperature = ctx.temperature
        for start, end in _blocks(lse_N.shape[0], flat_logits.shape[-1]):
            block = _scaled_block(flat_logits, rows, start, end, temperature)
            grad_block = softmax_statistics_grad(
                block,
                _block_index(flat_index, rows, start, end),
                lse_N[start:end],
                None if grad_logps_N is None else grad_logps_N[start:end],
                None if grad_entropy_N is None else grad_entropy_N[start:end],
                None if grad_entropy_N is None else entropy_N[start:end],
                out=grad_logits[start:end] if in_place else None,
            )
            if temperature != 1.0:
                grad_block.div_(temperature)
            if rows is not None:
                grad_logits.index_copy_(0, rows[start:end], grad_block.to(grad_logits.dtype))
            elif not in_place:
                grad_logits[start:end] = grad_block
        return grad_logits, None, None, None, None


def _block_index(flat_index: torch.Tensor, rows: torch.Tensor | None, start: int, end: int) -> torch.Tensor:
    return flat_index[start:end] if rows is None else flat_index.index_select(0, rows[start:end])


def _to_positions(values: torch.Tensor, rows: torch.Tensor | None, num_rows: int, shape: torch.Size) -> torch.Tensor:
    if rows is not None:
        values = values.new_zeros(num_rows).index_copy(0, rows, values)
    return values.view(shape)


def selective_log_softmax(
    logits: torch.Tensor, index: torch.Tensor, temperature: float = 1.0, row_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Log-probability of the token `index` under `softmax(logits / temperature)`, for every position.

    Equal to `torch.log_softmax(logits / temperature, -1).gather(-1, index[..., None]).squeeze(-1)`, computed as
    `logit[index] - logsumexp(logits)` block by block, so no full-size log-softmax tensor is built.

    Args:
        logits (`torch.Tensor`):
            Logits of shape `(..., vocab_size)`.
        index (`torch.Tensor`):
            Token ids of shape `logits.shape[:-1]`, or `logits.shape[:-1] + (K,)` for `K` tokens per position (e.g.
            top-k candidates); the result then has that shape too.
        temperature (`float`, *optional*, defaults to `1.0`):
            Divides the logits before the softmax.
        row_mask (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Boolean tensor of shape `logits.shape[:-1]`. Only positions where it is `True` are computed; the others
            are `0` and carry no gradient.

    Returns:
        `torch.Tensor`: Log-probabilities of shape `index.shape` (float32 for half-precision logits).
    """
    if index.ndim == logits.ndim:
        return _several_tokens_per_position(logits, index, temperature, row_mask)
    _check_temperature(temperature)
    flat_logits, flat_index = _flatten(logits, index)
    rows = _selected_rows(row_mask, index.shape, logits.device)
    logps, _ = _SelectiveLogSoftmaxFunction.apply(flat_logits, flat_index, rows, temperature, None)
    return _to_positions(logps, rows, flat_logits.shape[0], index.shape)


def _several_tokens_per_position(
    logits: torch.Tensor, index: torch.Tensor, temperature: float, row_mask: torch.Tensor | None
) -> torch.Tensor:
    if index.shape[:-1] != logits.shape[:-1]:
        raise ValueError(
            f"index has shape {tuple(index.shape)} but logits have shape {tuple(logits.shape)}: with several tokens "
            "per position, index must be the logits' shape with the vocabulary dimension replaced by the tokens."
        )
    # One blockwise pass per token column: K is small (candidates per position), and each pass keeps the memory
    # bound of the single-token path instead of materialising a [..., K, vocab] tensor.
    columns = [selective_log_softmax(logits, index[..., k], temperature, row_mask) for k in range(index.shape[-1])]
    return torch.stack(columns, dim=-1)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 128) -> torch.Tensor:
    """Entropy `H = -sum_v p_v log p_v` of `softmax(logits)` at every position.

    Args:
        logits (`torch.Tensor`):
            Logits of shape `(..., vocab_size)`.
        chunk_size (`int`, *optional*, defaults to `128`):
            Number of positions processed at once (bounds the temporary memory to `chunk_size * vocab_size`).

    Returns:
        `torch.Tensor`: Entropies of shape `logits.shape[:-1]`, in the logits' dtype like the reference (each block
        is computed in float32 and cast back).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (got {chunk_size}).")
    flat_logits, _ = _flatten(logits, None)
    values = []
    for start, end in _blocks(flat_logits.shape[0], flat_logits.shape[-1], block_rows=chunk_size):
        logps = _scaled_block(flat_logits, None, start, end, 1.0).log_softmax(dim=-1)
        values.append(-(logps.exp() * logps).sum(dim=-1))
    entropy = _scatter_rows(values, None, flat_logits.shape[0], logits).view(logits.shape[:-1])
    return entropy.to(logits.dtype)


def selective_log_softmax_and_entropy(
    logits: torch.Tensor,
    index: torch.Tensor,
    entropy_requires_grad: bool = True,
    temperature: float = 1.0,
    row_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of `index` and entropy of `softmax(logits / temperature)` in a single pass over the logits.

    Args:
        logits (`torch.Tensor`):
            Logits of shape `(..., vocab_size)`.
        index (`torch.Tensor`):
            Token ids of shape `logits.shape[:-1]`.
        entropy_requires_grad (`bool`, *optional*, defaults to `True`):
            If `False`, the entropy is computed without building an autograd graph (for logging; saves the memory
            of one block-sized softmax per block).
        temperature (`float`, *optional*, defaults to `1.0`):
            Divides the logits before the softmax.
        row_mask (`torch.Tensor` or `None`, *optional*, defaults to `None`):
            Boolean tensor of shape `index.shape`; positions where it is `False` get `0` for both outputs.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `(log_probs, entropies)`, both of shape `index.shape`.
    """
    _check_temperature(temperature)
    flat_logits, flat_index = _flatten(logits, index)
    rows = _selected_rows(row_mask, index.shape, logits.device)
    entropy_kind = "differentiable" if entropy_requires_grad else "logged"
    logps, entropy = _SelectiveLogSoftmaxFunction.apply(flat_logits, flat_index, rows, temperature, entropy_kind)
    num_rows = flat_logits.shape[0]
    return _to_positions(logps, rows, num_rows, index.shape), _to_positions(entropy, rows, num_rows, index.shape)
