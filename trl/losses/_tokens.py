"""Per-token helpers of the policy losses: boolean masks, shape checks and masked reductions."""

from __future__ import annotations

import torch


def _bool_mask(mask_B_T: torch.Tensor) -> torch.Tensor:
    return mask_B_T if mask_B_T.dtype == torch.bool else mask_B_T != 0


def _check_aligned(mask_B_T: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    """Every per-token tensor must have exactly the mask's shape: a silent broadcast would misalign tokens."""
    if mask_B_T.dim() != 2:
        raise ValueError(f"mask_B_T must have shape [B, T], got {tuple(mask_B_T.shape)}.")
    for name, tensor in tensors.items():
        if tensor is not None and tensor.shape != mask_B_T.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but the completion mask has shape {tuple(mask_B_T.shape)}: "
                "compute every per-token tensor on the same completion tokens."
            )


def _advantages_column(advantages: torch.Tensor, mask_B_T: torch.Tensor) -> torch.Tensor:
    """`[B]` advantages become a `[B, 1]` column; `[B, T]` (per-token, PPO) pass through."""
    batch = mask_B_T.shape[0]
    if advantages.dim() == 1 and advantages.shape[0] == batch:
        return advantages.unsqueeze(1)
    if advantages.dim() == 2 and advantages.shape[0] == batch and advantages.shape[1] in (1, mask_B_T.shape[1]):
        return advantages
    raise ValueError(
        f"advantages must have shape [B] or [B, T] with B={batch}, T={mask_B_T.shape[1]}; got "
        f"{tuple(advantages.shape)}."
    )


def _masked_log_ratio(a_B_T: torch.Tensor, b_B_T: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Padding may hold -inf log-probs: zero the difference there so neither the value nor the gradient sees NaN.
    return torch.where(mask, a_B_T - b_B_T, torch.zeros_like(a_B_T))


def _masked_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    values = values.expand_as(mask).to(torch.float32)
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp(min=1)
