"""The PPO value-function loss (clipped, as in PPO2)."""

from __future__ import annotations

import torch

from ._tokens import _bool_mask, _check_aligned, _masked_token_mean


def clipped_value_loss(
    values_B_T: torch.Tensor,
    old_values_B_T: torch.Tensor,
    returns_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO value loss `½·max((V − R)², (clip(V, V_old ± c) − R)²)`, mean over masked tokens.

    Args:
        values_B_T (`torch.Tensor` of shape `[B, T]`):
            Current value predictions (with gradient).
        old_values_B_T (`torch.Tensor` of shape `[B, T]`):
            Value predictions at rollout time.
        returns_B_T (`torch.Tensor` of shape `[B, T]`):
            GAE returns ([`gae_advantages`]).
        mask_B_T (`torch.Tensor` of shape `[B, T]`):
            Completion mask.
        clip_range (`float`, *optional*, defaults to `0.2`):
            `cliprange_value`.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the scalar loss and the fraction of tokens where the clipped term is
        the larger one (`val/clipfrac_avg`).
    """
    _check_aligned(mask_B_T, values_B_T=values_B_T, old_values_B_T=old_values_B_T, returns_B_T=returns_B_T)
    mask = _bool_mask(mask_B_T)
    old_values = old_values_B_T.detach()
    clipped_values = old_values + torch.clamp(values_B_T - old_values, -clip_range, clip_range)
    unclipped_loss = (values_B_T - returns_B_T).square()
    clipped_loss = (clipped_values - returns_B_T).square()
    per_token = 0.5 * torch.max(unclipped_loss, clipped_loss)
    loss = torch.where(mask, per_token, torch.zeros_like(per_token)).sum() / mask.sum().clamp(min=1)
    return loss, _masked_token_mean(clipped_loss > unclipped_loss, mask)
