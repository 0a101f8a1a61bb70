"""KL estimators between the policy and a reference, per token (k1, k2, k3) and per sequence."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._tokens import _bool_mask, _check_aligned, _masked_log_ratio


def kl_k1(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k1 estimator of `KL(π || π_ref)` per sample: `d = log π − log π_ref` (unbiased, high variance, can be < 0).

    Args:
        logps (`torch.Tensor`):
            Log-probs of the sampled tokens under `π` (the sampling distribution).
        ref_logps (`torch.Tensor`):
            Log-probs of the same tokens under `π_ref`.
    """
    return logps - ref_logps


def kl_k2(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k2 estimator `d²/2` with `d = log π − log π_ref` (biased, low variance, ≥ 0).

    Args:
        logps (`torch.Tensor`):
            Log-probs of the sampled tokens under `π`.
        ref_logps (`torch.Tensor`):
            Log-probs of the same tokens under `π_ref`.
    """
    return 0.5 * (logps - ref_logps).square()


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """k3 estimator `e^{−d} + d − 1` with `d = log π − log π_ref` (unbiased under `π`, ≥ 0; Schulman 2020).

    This is GRPO's KL term `e^{ref − logπ} − (ref − logπ) − 1` and PPO's `kl_estimator="k3"`. Computed with
    `expm1` so it stays accurate for small `d`.

    Args:
        logps (`torch.Tensor`):
            Log-probs of the sampled tokens under `π`.
        ref_logps (`torch.Tensor`):
            Log-probs of the same tokens under `π_ref`.
    """
    d = logps - ref_logps
    return torch.expm1(-d) + d


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-sample KL estimate by name (`"k1"`, `"k2"` or `"k3"`, see [`KL_ESTIMATORS`]).

    Args:
        logps (`torch.Tensor`):
            Log-probs of the sampled tokens under `π`.
        ref_logps (`torch.Tensor`):
            Log-probs of the same tokens under `π_ref`.
        estimator (`str`, *optional*, defaults to `"k3"`):
            Estimator name.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"Unknown KL estimator {estimator!r}: use one of {list(KL_ESTIMATORS)}.")
    return KL_ESTIMATORS[estimator](logps, ref_logps)


def sequence_kl(
    logps_B_T: torch.Tensor, ref_logps_B_T: torch.Tensor, mask_B_T: torch.Tensor, estimator: str = "k1"
) -> torch.Tensor:
    """Sum of a per-token KL estimate over each completion's tokens, shape `[B]`.

    RLOO penalises the reward with it, `r ← r − β·sequence_kl(old_logps, ref_logps, mask)` (k1), instead of adding a
    KL term to the loss.

    Args:
        logps_B_T (`torch.Tensor` of shape `[B, T]`):
            Policy log-probs (RLOO: of the generating policy).
        ref_logps_B_T (`torch.Tensor` of shape `[B, T]`):
            Reference log-probs.
        mask_B_T (`torch.Tensor` of shape `[B, T]`):
            Completion mask.
        estimator (`str`, *optional*, defaults to `"k1"`):
            `"k1"`, `"k2"` or `"k3"`.
    """
    _check_aligned(mask_B_T, logps_B_T=logps_B_T, ref_logps_B_T=ref_logps_B_T)
    mask = _bool_mask(mask_B_T)
    d = _masked_log_ratio(logps_B_T, ref_logps_B_T, mask)
    per_token = kl_estimate(d, torch.zeros_like(d), estimator)
    return torch.where(mask, per_token, torch.zeros_like(per_token)).sum(dim=1)


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}
