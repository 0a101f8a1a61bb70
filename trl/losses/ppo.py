"""PPO's per-token rewards: the reward-model score on the last completion token minus a per-token KL penalty.

With `d_t = log π(y_t) − log π_ref(y_t)` (log-probs of the generating policy and the reference):

- `k1`: `KL_t = d_t`;
- `k3`: `KL_t = (e^{−d_t} − 1) + d_t` (non-negative, lower variance);

and `r_t = −kl_coef·KL_t`, plus the score `s` on the last token of the completion. GAE
([`~trl.losses.advantages.gae_advantages`]) turns these into advantages and returns; PPO whitens the advantages
([`~trl.losses.advantages.masked_whiten`]) and optionally the rewards (`whiten_rewards`, mean kept).
"""

from __future__ import annotations

import torch

from ._tokens import _bool_mask, _check_aligned
from .kl import kl_estimate


PPO_KL_ESTIMATORS = ("k1", "k3")


def last_token_index(mask_B_T: torch.Tensor) -> torch.Tensor:
    """Index of the last position inside the mask of each row (`−1` for an empty row), shape `[B]`.

    Args:
        mask_B_T (`torch.Tensor` of shape `[B, T]`):
            Completion mask (right-padded, or any mask: the last true position counts).
    """
    mask = _bool_mask(mask_B_T)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, positions, torch.full_like(positions, -1)).amax(dim=1)


def kl_penalized_rewards(
    scores_B: torch.Tensor,
    logps_B_T: torch.Tensor,
    ref_logps_B_T: torch.Tensor,
    mask_B_T: torch.Tensor,
    kl_coef: float = 0.05,
    kl_estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO rewards `r_t = −kl_coef·KL_t + s·[t = last token]` and the per-token KL.

    Example: `d = [0.5, 0.0]`, `kl_coef = 0.1`, score 2 with k1: `r = [−0.05, 2.0]`; with k3 the first KL is
    `e^{−0.5} − 1 + 0.5 = 0.106531`, so `r = [−0.0106531, 2.0]`.

    Args:
        scores_B (`torch.Tensor` of shape `[B]`):
            Reward-model score of each completion (after the missing-EOS penalty).
        logps_B_T (`torch.Tensor` of shape `[B, T]`):
            Log-probs of the completion tokens under the generating policy.
        ref_logps_B_T (`torch.Tensor` of shape `[B, T]`):
            The same under the reference model.
        mask_B_T (`torch.Tensor` of shape `[B, T]`):
            Completion mask (tokens up to and including the stop token).
        kl_coef (`float`, *optional*, defaults to `0.05`):
            Weight of the KL penalty.
        kl_estimator (`str`, *optional*, defaults to `"k1"`):
            `"k1"` or `"k3"`.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: `rewards_B_T` and `kl_B_T`, both 0 outside the mask. A row with an
        empty mask gets no score.
    """
    if kl_estimator not in PPO_KL_ESTIMATORS:
        raise ValueError(f"Unknown kl_estimator {kl_estimator!r}: use one of {list(PPO_KL_ESTIMATORS)}.")
    _check_aligned(mask_B_T, logps_B_T=logps_B_T, ref_logps_B_T=ref_logps_B_T)
    if scores_B.shape != mask_B_T.shape[:1]:
        raise ValueError(
            f"scores_B has shape {tuple(scores_B.shape)}; expected one score per row {mask_B_T.shape[0]}."
        )
    mask = _bool_mask(mask_B_T)
    zeros = torch.zeros_like(logps_B_T)
    log_ratio = torch.where(mask, logps_B_T - ref_logps_B_T, zeros)
    kl_B_T = torch.where(mask, kl_estimate(log_ratio, zeros, kl_estimator), zeros)
    last_B = last_token_index(mask)
    positions = torch.arange(mask.shape[1], device=mask.device)
    at_last_B_T = (positions.unsqueeze(0) == last_B.unsqueeze(1)) & mask
    rewards_B_T = -kl_coef * kl_B_T + at_last_B_T * scores_B.to(kl_B_T.dtype).unsqueeze(1)
    return rewards_B_T, kl_B_T
