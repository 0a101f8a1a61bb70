"""Input preparation and the KL term shared by the policy-gradient losses ([`~trl.losses.policy_loss`] and
[`~trl.losses.gmpo_loss`])."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._tokens import _advantages_column, _bool_mask, _check_aligned, _masked_log_ratio, _masked_token_mean
from .kl import kl_k3


class _PolicyInputs(NamedTuple):
    old_logps_B_T: torch.Tensor  # the generating policy's log-probs (`logps_B_T.detach()` when on-policy)
    mask: torch.Tensor  # the completion mask as booleans
    advantages: torch.Tensor  # `[B, 1]` (one per completion) or `[B, T]` (per token)
    log_ratio_B_T: torch.Tensor  # `log π_θ − log π_old` on completion tokens, 0 on padding (gradient to `logps_B_T`)


def _prepare_policy_inputs(
    logps_B_T: torch.Tensor,
    old_logps_B_T: torch.Tensor | None,
    advantages_B: torch.Tensor,
    mask_B_T: torch.Tensor,
    beta: float,
    ref_logps_B_T: torch.Tensor | None,
    entropy_mask_B_T: torch.Tensor | None,
    sampler_weights_B_T: torch.Tensor | None,
) -> _PolicyInputs:
    """Checks the inputs (reference log-probs when `beta != 0`, every per-token tensor shaped like the mask) and
    returns the old log-probs, the boolean mask, the advantages as a column and the masked log-ratio."""
    if beta != 0.0 and ref_logps_B_T is None:
        raise ValueError("beta != 0 needs ref_logps_B_T (reference log-probs); set beta=0.0 to train without KL.")
    old_logps_B_T = logps_B_T.detach() if old_logps_B_T is None else old_logps_B_T
    _check_aligned(
        mask_B_T,
        logps_B_T=logps_B_T,
        old_logps_B_T=old_logps_B_T,
        ref_logps_B_T=ref_logps_B_T,
        entropy_mask_B_T=entropy_mask_B_T,
        sampler_weights_B_T=sampler_weights_B_T,
    )
    mask = _bool_mask(mask_B_T)
    advantages = _advantages_column(advantages_B, mask_B_T)
    log_ratio_B_T = _masked_log_ratio(logps_B_T, old_logps_B_T.detach(), mask)
    return _PolicyInputs(old_logps_B_T, mask, advantages, log_ratio_B_T)


def _add_kl_term(
    per_token_loss: torch.Tensor,
    logps_B_T: torch.Tensor,
    ref_logps_B_T: torch.Tensor | None,
    mask: torch.Tensor,
    beta: float,
    metrics: dict[str, torch.Tensor],
    ratio_B_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """`per_token_loss + β·k3(π_θ, π_ref)` on completion tokens (times `ratio_B_T` when given: the bias-corrected
    KL), with the masked token mean of the KL written to `metrics["kl"]`; `per_token_loss` itself when `beta == 0`."""
    if beta == 0.0:
        return per_token_loss
    safe_logps = torch.where(mask, logps_B_T, torch.zeros_like(logps_B_T))
    per_token_kl = kl_k3(safe_logps, torch.where(mask, ref_logps_B_T, torch.zeros_like(ref_logps_B_T)))
    if ratio_B_T is not None:
        per_token_kl = per_token_kl * ratio_B_T
    metrics["kl"] = _masked_token_mean(per_token_kl.detach(), mask)
    return per_token_loss + beta * per_token_kl
