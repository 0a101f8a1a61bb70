"""Padding and flushing of tensors: `pad`, `pad_to_length`, `flush_left` / `flush_right`, `first_true_indices`,
`truncate_right`. Re-exported by `trl.trainer.utils`, the reference's import path."""

from __future__ import annotations

import math

import numpy as np
import torch


# ---------------------------------------------------------------------------------------------------- padding
def pad(
    tensors: list[torch.Tensor],
    padding_value: int = 0,
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> torch.Tensor:
    """Stack tensors of different shapes into one tensor, padding every dimension to the largest size.

    Args:
        tensors (`list[torch.Tensor]`):
            Tensors with the same number of dimensions.
        padding_value (`int`, *optional*, defaults to `0`):
            Value of the padded entries.
        padding_side (`str`, *optional*, defaults to `"right"`):
            `"right"` puts the values at the start of the first dimension, `"left"` at its end. Other dimensions are
            always padded at their end.
        pad_to_multiple_of (`int` or `None`, *optional*, defaults to `None`):
            Round the first dimension up to a multiple of this value.

    Returns:
        `torch.Tensor`: Tensor of shape `(len(tensors), *max_shape)`.

    Example:
        `pad([torch.tensor([1, 2, 3]), torch.tensor([4, 5])])` is `tensor([[1, 2, 3], [4, 5, 0]])`.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    if not tensors:
        raise ValueError("pad needs at least one tensor.")
    shape = np.max([t.shape for t in tensors], axis=0).tolist()
    if pad_to_multiple_of is not None and shape:
        shape[0] = math.ceil(shape[0] / pad_to_multiple_of) * pad_to_multiple_of
    output = torch.full((len(tensors), *shape), padding_value, dtype=tensors[0].dtype, device=tensors[0].device)
    for i, tensor in enumerate(tensors):
        if tensor.dim() == 0:
            output[i] = tensor
            continue
        length = tensor.shape[0]
        first = slice(0, length) if padding_side == "right" else slice(shape[0] - length, shape[0])
        output[(i, first, *(slice(0, s) for s in tensor.shape[1:]))] = tensor
    return output


def pad_to_length(tensor: torch.Tensor, length: int, pad_value: int | float, dim: int = -1) -> torch.Tensor:
    """Pad `tensor` with `pad_value` at the end of dimension `dim` up to `length` (unchanged if already as long)."""
    if tensor.size(dim) >= length:
        return tensor
    pad_size = list(tensor.shape)
    pad_size[dim] = length - tensor.size(dim)
    filler = torch.full(pad_size, pad_value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([tensor, filler], dim=dim)


def flush_left(mask: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Shift every row left so that its first `1` in `mask` lands in column 0, then drop the columns that are `0` in
    every row. The same shift is applied to `tensors` (same leading shape as `mask`).

    Example: mask `[[0, 0, 1, 1], [0, 1, 1, 0]]` becomes `[[1, 1], [1, 1]]`.

    Returns:
        The flushed mask if no `tensors` are given, else the tuple `(mask, *tensors)`.
    """
    return _flush(mask, tensors, left=True)


def flush_right(mask: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Shift every row right so that its last `1` in `mask` lands in the last column, then drop the columns that are
    `0` in every row. The mirror of [`flush_left`], with the same return convention."""
    return _flush(mask, tensors, left=False)


def _flush(mask: torch.Tensor, tensors: tuple[torch.Tensor, ...], left: bool):
    nonzero = mask != 0
    width = mask.shape[1]
    # Leading (left) or trailing (right) zeros of each row; a row of zeros gets `width`, a full turn (no shift).
    shift = first_true_indices(nonzero if left else nonzero.flip(1))
    columns = torch.arange(width, device=mask.device)
    source = (columns + shift.unsqueeze(1)) % width if left else (columns - shift.unsqueeze(1)) % width
    shifted = [mask.gather(1, source)] + [t.gather(1, _expand_index(source, t)) for t in tensors]
    used = (shifted[0] != 0).any(dim=0).nonzero().squeeze(-1)
    if left:
        shifted = [t[:, : int(used.max()) + 1 if used.numel() else 0] for t in shifted]
    else:
        shifted = [t[:, int(used.min()) if used.numel() else width :] for t in shifted]
    return shifted[0] if not tensors else tuple(shifted)


def _expand_index(index: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    extra = tensor.shape[2:]
    return index.view(*index.shape, *([1] * len(extra))).expand(*index.shape, *extra)


def first_true_indices(bools: torch.Tensor, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Index of the first `True` along the last dimension; the dimension's length where a row has none."""
    length = bools.size(-1)
    positions = torch.arange(length, dtype=dtype, device=bools.device)
    return torch.where(bools, positions, torch.full_like(positions, length)).min(dim=-1).values


def truncate_right(
    input_ids: torch.Tensor, stop_token_id: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace everything after the first `stop_token_id` of each row by `pad_token_id`.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the truncated ids, and a mask that is `1` up to and including the stop
        token (everywhere for rows without one).
    """
    stop_at = first_true_indices(input_ids == stop_token_id).unsqueeze(-1)
    after_stop = torch.arange(input_ids.shape[-1], device=input_ids.device) > stop_at
    return input_ids.masked_fill(after_stop, pad_token_id), (~after_stop).long()
